"""The words of a notice: the template sets (``nl``, ``nl-u``, ``en``), ``texts.toml`` and
the style a site chose; and the checks ``config check`` runs on a site's own texts."""

from __future__ import annotations

import logging
import string
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from milter.core.context import domain_in, domain_of
from milter.policy import RulePolicy

log = logging.getLogger("skot-milter.notices")

KINDS = ("notice", "summary", "release")
COMMON = frozenset({"name", "postmaster", "school", "ref"})
PLACEHOLDERS: Mapping[str, frozenset[str]] = {
    "notice": COMMON | {"action_text", "subject", "recipients", "time", "rules_text",
                        "advice_heading",
                        "rules_html", "advice", "release_text", "summary_text", "rule_id",
                        "article", "rule_title", "supervisor_text", "delete_date",
                        "retention_days", "record_text"},
    "summary": COMMON | {"summary_intro", "held_text", "held_html", "supervisor_text",
                         "release_text"},
    "release": COMMON | {"outcome_text", "subject", "recipients", "time"},
}
REQUIRED: Mapping[str, frozenset[str]] = {
    "notice": frozenset({"subject", "recipients", "ref", "advice"}),
    "summary": frozenset({"summary_intro"}),
    "release": frozenset({"outcome_text", "subject", "ref"}),
}
LANGS = ("nl", "en")
SETS = ("nl", "nl-u", "en")
# texts.toml: section -> keys every set must have.
TEXT_KEYS: Mapping[str, tuple[str, ...]] = {
    "words": ("subject_prefix", "no_subject", "school", "and", "quote", "days", "months",
              "time", "date", "article", "advice_heading", "advice_heading_supervisor"),
    "subject": ("reject", "quarantine", "tag", "forward", "supervisor", "summary", "released",
                "deleted"),
    "action": ("reject", "quarantine", "tag", "forward", "supervisor_reject",
               "supervisor_quarantine", "supervisor_tag"),
    "sentences": ("held", "held_supervisor", "doubt_supervisor", "doubt", "doubt_as_supervisor",
                  "advice_quoted", "also_held", "summary", "summary_supervisor", "summary_item",
                  "summary_more", "summary_held", "released", "deleted"),
    "status": ("reject", "quarantine", "tag"),
    "findings": ("attachment", "archive_member", "body", "subject", "bsn", "iban",
                 "pupil_rows", "markings", "labels", "uninspectable", "message", "media",
                 "media_kinds",
                 "forward", "manual_forward", "private_address", "private_address_supervisor",
                 "more", "why"),
}
SUMMARY_ITEMS = 20  # a summary lists at most this many messages, then "and N more"


def text_set(lang: str, register_nl: str = "je") -> str:
    """The folder of texts for a language: Dutch comes in two registers (je / u)."""
    return "nl-u" if lang == "nl" and register_nl == "u" else lang


def fields_of(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


# -- the texts --------------------------------------------------------------------------------

_TEXTS_CACHE: dict[tuple[Path, float], Mapping[str, Any]] = {}


@dataclass(frozen=True)
class Texts:
    """One set of texts (a language in one register): ``texts.toml`` and the templates."""

    name: str
    directory: Path
    data: Mapping[str, Any]

    @classmethod
    def load(cls, templates: Path, name: str) -> Texts:
        path = templates / name / "texts.toml"
        key = (path, path.stat().st_mtime)
        data = _TEXTS_CACHE.get(key)
        if data is None:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
            _TEXTS_CACHE[key] = data
        return cls(name, templates / name, data)

    def get(self, section: str, key: str, **values: Any) -> str:
        return str(self.data[section][key]).format(**values)

    def count(self, section: str, key: str, n: int, **values: Any) -> str:
        """A [singular, plural] pair chosen by ``n``."""
        one, many = self.data[section][key]
        return str(one if n == 1 else many).format(n=n, **values)

    def quote(self, value: str) -> str:
        return str(self.data["words"]["quote"]).replace("{}", value)

    def join(self, items: Sequence[str]) -> str:
        """"a, b en c"."""
        items = [i for i in items if i]
        if len(items) <= 1:
            return "".join(items)
        return ", ".join(items[:-1]) + f" {self.data['words']['and']} " + items[-1]

    def when(self, moment: datetime, zone: ZoneInfo, *, key: str = "time") -> str:
        local = moment.astimezone(zone)
        words = self.data["words"]
        return str(words[key]).format(
            weekday=words["days"][local.weekday()], day=local.day,
            month=words["months"][local.month - 1], year=local.year, hour=local.hour,
            minute=f"{local.minute:02d}")

    def rule(self, rp: RulePolicy, key: str, internal: bool = False) -> str:
        """A rule's title, finding or advice; the policy's text when this set has none."""
        entry = self.data.get("rules", {}).get(rp.id, {})
        if internal and entry.get(f"{key}_internal"):
            return str(entry[f"{key}_internal"])
        if entry.get(key):
            return str(entry[key])
        return rp.text(key, self.name[:2]) if key != "finding" else ""

    def articles(self, rp: RulePolicy) -> str:
        arts = list(rp.articles or (rp.article,))
        return self.count("words", "article", len(arts), articles=self.join(arts))

    def template(self, kind: str, rule_id: str = "") -> tuple[str, str]:
        """(text, html) of a template: a rule's own override when both parts exist."""
        txt, htm = template_paths(self.directory.parent, self.name, rule_id, kind)
        return txt.read_text(encoding="utf-8"), htm.read_text(encoding="utf-8")


def template_paths(directory: Path, lang: str, rule_id: str = "",
                   kind: str = "notice") -> tuple[Path, Path]:
    stems = ([rule_id] if rule_id and kind == "notice" else []) + [kind]
    for stem in stems:
        txt, htm = directory / lang / f"{stem}.txt", directory / lang / f"{stem}.html"
        if txt.exists() and htm.exists():
            return txt, htm
    return directory / lang / f"{kind}.txt", directory / lang / f"{kind}.html"


@dataclass(frozen=True)
class Style:
    """How this school's notices are written and what they promise (from the config)."""

    templates: Path
    postmaster: str
    school: str = ""
    school_domains: tuple[str, ...] = ()
    timezone: str = "Europe/Amsterdam"
    register_nl: str = "je"
    retention_days: int = 30
    record_days: int = 730  # audit.retention_days: how long the record of it is kept
    language: str = "nl"

    @classmethod
    def from_config(cls, cfg: Any) -> Style:
        return cls(templates=cfg.notice_templates, postmaster=cfg.school.postmaster,
                   school=cfg.school.name, school_domains=tuple(cfg.school_domains),
                   timezone=cfg.notices.timezone, register_nl=cfg.notices.register_nl,
                   retention_days=cfg.quarantine.retention_days, language=cfg.school.language,
                   record_days=cfg.audit.retention_days)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def texts(self, lang: str) -> Texts:
        return Texts.load(self.templates, text_set(lang, self.register_nl))

    def internal(self, address: str) -> bool:
        return domain_in(domain_of(address), self.school_domains)



# -- checks (``config check``) --------------------------------------------------------------------

def _text_problems(path: Path) -> list[str]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return [f"{path}: cannot be read: {exc}"]
    problems = []
    for section, keys in TEXT_KEYS.items():
        have = data.get(section)
        if not isinstance(have, dict):
            problems.append(f"{path}: [{section}] missing")
            continue
        for key in keys:
            if key not in have:
                problems.append(f"{path}: {section}.{key} missing")
    words = data.get("words", {})
    for key, n in (("days", 7), ("months", 12)):
        if key in words and (not isinstance(words[key], list) or len(words[key]) != n):
            problems.append(f"{path}: words.{key}: expected a list of {n} names")
    return problems


def template_problems(directory: Path, rule_ids: Collection[str] | None = None,
                      sets: Iterable[str] = LANGS) -> list[str]:
    """Missing templates or texts, unknown placeholders, placeholders a notice cannot do
    without, and per-rule overrides that would silently never be used."""
    problems: list[str] = []
    wanted = list(dict.fromkeys([*sets, *(s for s in SETS if (directory / s).is_dir())]))
    for lang in wanted:
        paths = sorted((directory / lang).glob("*.txt")) + sorted((directory / lang).glob(
            "*.html"))
        for stem in sorted({p.stem for p in paths} - set(KINDS)):
            if rule_ids is not None and stem not in rule_ids:
                problems.append(f"{directory / lang / stem}.txt|html: override for unknown rule "
                                f"{stem!r}; it is never used (file names are rule ids)")
            for ext, other in (("txt", "html"), ("html", "txt")):
                if (directory / lang / f"{stem}.{ext}").exists() and not (
                        directory / lang / f"{stem}.{other}").exists():
                    problems.append(f"{directory / lang / stem}.{ext}: override without "
                                    f"{stem}.{other}; an override needs both parts, else the "
                                    "default notice is used")
        for kind in KINDS:
            for ext in ("txt", "html"):
                if not (directory / lang / f"{kind}.{ext}").exists():
                    problems.append(f"{directory / lang / kind}.{ext}: missing")
        if (directory / lang / "texts.toml").exists():
            problems += _text_problems(directory / lang / "texts.toml")
        else:
            problems.append(f"{directory / lang / 'texts.toml'}: missing")
        for p in paths:
            kind = p.stem if p.stem in KINDS else "notice"
            try:
                found = fields_of(p.read_text(encoding="utf-8"))
            except (ValueError, OSError) as exc:
                problems.append(f"{p}: cannot be read as a template: {exc}")
                continue
            unknown = sorted(found - PLACEHOLDERS[kind])
            if unknown:
                problems.append(f"{p}: unknown placeholder(s) " + ", ".join(
                    "{" + u + "}" for u in unknown) + "; allowed: " + ", ".join(
                    sorted(PLACEHOLDERS[kind])))
            missing = sorted(REQUIRED[kind] - found)
            if kind == "summary" and not found & {"held_text", "held_html"}:
                missing.append("held_text")  # (or held_html): the messages held back
            if missing:
                problems.append(f"{p}: missing placeholder(s) " + ", ".join(
                    "{" + m + "}" for m in missing))
    return problems


# -- who gets one ---------------------------------------------------------------------------------
