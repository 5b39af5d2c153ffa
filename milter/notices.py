"""Notices: tell a staff member, in plain words, what was stopped, why and what to do instead.

Everything a teacher reads is data beside the policy (``policies/notices/<set>/``: the
templates ``notice``, ``summary`` and ``release`` as ``.txt`` and ``.html``, and
``texts.toml`` with every other word; the sets are ``nl`` (register "je"), ``nl-u``
(register "u", ``notices.register_nl``) and ``en``; the variables are documented in
``policies/notices/README.md``). A notice names the file and what was found in it from the
audit evidence (names and counts, never a matched value), gives the local time in words,
and for a held message the day it will be deleted and how to ask for its release.

Notices go out from the postmaster address through the next hop *after* the client has its
answer, only to school addresses (no backscatter), never for bounces, notices or
auto-submitted mail (RFC 3834), except an automatic forward: its notice goes to the owner of
the forwarding mailbox. At most ``notices.rate_per_hour`` per address: each one held back
is audited (``notice-suppressed``) and, when the hour is over, one summary lists them.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import sqlite3
import string
import threading
import time
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from milter.core.context import domain_in, domain_of
from milter.core.message import Message
from milter.core.verdict import FiredRule, Verdict
from milter.policy import Policy, RulePolicy

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


# -- what was found, in words ---------------------------------------------------------------------

def _why(texts: Texts, reason: str) -> str:
    table: Mapping[str, str] = texts.data["findings"]["why"]
    low = reason.lower()
    for start, words in table.items():
        if start and (low.startswith(start.lower()) or start.lower() in low):
            return str(words)
    return str(table.get("", reason))


def _item_name(texts: Texts, item: Mapping[str, Any]) -> str:
    return texts.quote(str(item.get("name") or "?"))


def _item_findings(texts: Texts, item: Mapping[str, Any]) -> list[str]:
    what: list[str] = []
    for key in ("pupil_rows", "bsn", "iban"):
        n = item.get(key)
        if isinstance(n, int) and n > 0:
            what.append(texts.count("findings", key, n))
    for key in ("labels", "markings"):
        words = [texts.quote(str(w)) for w in item.get(key) or []]
        if words:
            what.append(texts.count("findings", key, len(words), words=texts.join(words)))
    return what


def _limited(texts: Texts, parts: list[str], limit: int = 5) -> list[str]:
    if len(parts) <= limit:
        return parts
    return parts[:limit] + [texts.get("findings", "more", n=len(parts) - limit)]


def describe(texts: Texts, rp: RulePolicy, fired: FiredRule | None, mail_from: str,
             sender_name: str = "") -> str:
    """What the rule found, from its evidence: file names, counts, labels; never a value.
    ``sender_name``: the finding is told to someone else (the sender's supervisor)."""
    ev: Mapping[str, Any] = fired.evidence if fired is not None else {}
    items = [i for i in ev.get("items", []) or [] if isinstance(i, Mapping)]
    parts: list[str] = []
    if rp.id == "A1.uninspectable" or (items and all("reason" in i for i in items)):
        parts = [texts.get("findings", "message", why=_why(texts, str(i.get("reason", ""))))
                 if str(i.get("name", "")).startswith("(") else
                 texts.get("findings", "uninspectable", name=_item_name(texts, i),
                           why=_why(texts, str(i.get("reason", "")))) for i in items]
    elif items and all(i.get("type") in ("image", "video", "audio") and
                       not _item_findings(texts, i) for i in items):
        kinds = texts.data["findings"]["media_kinds"]
        parts = [texts.get("findings", "media", name=_item_name(texts, i),
                           kind=kinds.get(i.get("type"), i.get("type"))) for i in items]
    elif items or ev.get("subject_markings"):
        for i in items:
            what = texts.join(_item_findings(texts, i))
            if not what:
                continue
            if str(i.get("name", "")).startswith("("):  # the message text itself
                parts.append(texts.get("findings", "body", what=what))
            else:
                key = "archive_member" if "/" in str(i.get("name", "")) else "attachment"
                parts.append(texts.get("findings", key, name=_item_name(texts, i), what=what))
        marks = [texts.quote(str(w)) for w in ev.get("subject_markings") or []]
        if marks:
            parts.append(texts.get("findings", "subject", what=texts.count(
                "findings", "markings", len(marks), words=texts.join(marks))))
    elif ev.get("forwarding_mailbox") or ev.get("signals") and "original_author" in ev:
        parts = [texts.get("findings", "forward", mailbox=ev.get("forwarding_mailbox") or "?",
                           recipients=texts.join([str(r) for r in ev.get(
                               "external_recipients", [])]))]
    elif ev.get("original_authors"):
        parts = [texts.get("findings", "manual_forward",
                           authors=texts.join([str(a) for a in ev["original_authors"]]),
                           recipients=texts.join([str(r) for r in ev.get(
                               "external_recipients", [])]))]
    elif ev.get("staff_member"):
        parts = [texts.get("findings", "private_address_supervisor", sender=mail_from,
                           name=sender_name) if sender_name else
                 texts.get("findings", "private_address", sender=mail_from)]
    parts = _limited(texts, parts)
    return "; ".join(parts) if parts else texts.rule(rp, "finding")


# -- the request and its rendering --------------------------------------------------------------

@dataclass(frozen=True)
class NoticeRequest:
    """Everything a notice needs, captured when the verdict is final. ``rules``: every
    enforced rule that fired (all are named), those that ask for a notice first."""

    txid: str
    verdict: Verdict
    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    message_id: str
    received: datetime
    rules: tuple[RulePolicy, ...]
    release_address: str = ""  # the sender may release it by replying here, with a reason
    release_link: str = ""     # or on this page of the web view, signed in (web.public_url)
    intro: str = ""            # a first paragraph (the supervisor's copy of a self-release)

    def fired(self, rule_id: str) -> FiredRule | None:
        return next((r for r in self.verdict.rules if r.id == rule_id), None)

    def forwarded_by(self) -> str:
        """The school mailbox whose forwarding rule sent this message out, if it was one."""
        for r in self.verdict.rules:
            box = r.evidence.get("forwarding_mailbox") if r.evidence else None
            if r.mode == "enforce" and isinstance(box, str) and box:
                return box.lower()
        return ""


_LINK = "\x00link\x00"  # where the release link goes, until it is written as text or HTML


def _fill(template: str, values: Mapping[str, str], *, is_html: bool,
          raw: Collection[str] = ()) -> str:
    if is_html:
        values = {k: (v if k in raw else html.escape(v)) for k, v in values.items()}
    out = template.format_map(values)
    if not is_html:  # an empty optional paragraph leaves no gap
        out = re.sub(r"[ \t]+\n", "\n", out)
        out = re.sub(r"\n[ \t]+", "\n", out)
        out = re.sub(r"\n{3,}", "\n\n", out).lstrip("\n")
    else:
        out = re.sub(r"<p>\s*</p>\n?", "", out)
    return out


def _paragraphs_html(text: str) -> str:
    return "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n") if p.strip())


def render(req: NoticeRequest, style: Style, *, lang: str, name: str, kind: str = "sender",
           sender_name: str = "", supervisor: str = "", also_held: int = 0,
           rule: RulePolicy | None = None) -> tuple[str, str, str]:
    """(subject, text, html) of one notice. ``kind``: "sender" (your message), "forward"
    (a message in your mailbox was forwarded) or "supervisor" (a message of ``sender_name``).
    ``supervisor``: the name of the reader's supervisor, used in the advice to ask them."""
    texts = style.texts(lang)
    zone = style.zone
    action = req.verdict.action if req.verdict.action in ("reject", "quarantine") else "tag"
    internal = bool(req.rcpt_tos) and all(style.internal(r) for r in req.rcpt_tos)
    rule = rule or req.rules[0]
    no_subject = texts.get("words", "no_subject")
    recipients = ", ".join(req.rcpt_tos)
    lines, items_html = [], []
    for rp in req.rules:
        title = texts.rule(rp, "title", internal)
        finding = describe(texts, rp, req.fired(rp.id), req.mail_from,
                           sender_name if kind == "supervisor" else "")
        line = f"{title} ({texts.articles(rp)}): {finding}."
        lines.append(f"- {line}")
        items_html.append(f"<li><strong>{html.escape(title)}</strong> "
                          f"({html.escape(texts.articles(rp))}): {html.escape(finding)}.</li>")
    advice = "\n".join(dict.fromkeys(a for rp in req.rules
                                     if (a := texts.rule(rp, "advice", internal))))
    if kind == "supervisor" and advice:  # advice to the sender, quoted: "je" is not the reader
        advice = texts.get("sentences", "advice_quoted", sender=sender_name,
                           advice=texts.quote(advice.replace("\n", " ")))
    if kind == "supervisor":
        action_text = texts.get("action", f"supervisor_{action}", sender=sender_name)
        supervisor_text = texts.get("sentences", "doubt_as_supervisor", sender=sender_name)
    else:
        action_text = texts.get("action", "forward" if kind == "forward" else action,
                                recipients=recipients)
        supervisor_text = (texts.get("sentences", "doubt_supervisor", supervisor=supervisor)
                           if supervisor else texts.get("sentences", "doubt"))
    delete_on = req.received + timedelta(days=style.retention_days)
    delete_date = texts.when(delete_on, zone, key="date")
    held = ("held_supervisor" if kind == "supervisor" else
            "held_self" if req.release_address else "held")
    link = req.release_link if held == "held_self" else ""
    if link and "held_self_link" in texts.data.get("sentences", {}):
        held = "held_self_link"  # (a site's own texts without the sentence: reply only)
    sentence = texts.get("sentences", held, days=style.retention_days,
                         postmaster=style.postmaster, delete_date=delete_date,
                         address=req.release_address, link=_LINK) \
        if action == "quarantine" else ""
    # the link is a real link in the HTML part; the text part shows the address as it is
    release_html = html.escape(sentence).replace(
        _LINK, f'<a href="{html.escape(link)}">{html.escape(link)}</a>')
    release_text = sentence.replace(_LINK, link)
    if req.intro:  # the sender's own words (a reason): text, never markup
        release_text = req.intro + ("\n\n" + release_text if release_text else "")
        release_html = html.escape(req.intro) + ("\n\n" + release_html if release_html
                                                 else "")
    values = {
        "name": name, "action_text": action_text, "subject": req.subject or no_subject,
        "recipients": recipients, "time": texts.when(req.received, zone),
        "rules_text": "\n".join(lines), "rules_html": "<ul>" + "".join(items_html) + "</ul>",
        "advice": advice, "release_text": release_text, "postmaster": style.postmaster,
        "ref": req.txid,
        "summary_text": texts.count("sentences", "also_held", also_held) if also_held else "",
        "school": style.school or texts.get("words", "school"), "rule_id": rule.id,
        "article": texts.articles(rule), "rule_title": texts.rule(rule, "title", internal),
        "supervisor_text": supervisor_text, "delete_date": delete_date,
        "retention_days": str(style.retention_days),
        # the teacher is told that a record was kept, and for how long (AVG transparency)
        "record_text": (texts.get("sentences", "record", days=style.record_days)
                        if style.record_days else texts.get("sentences", "record_forever")),
        "advice_heading": texts.get("words", "advice_heading_supervisor" if kind == "supervisor"
                                    else "advice_heading", sender=sender_name),
    }
    txt_t, html_t = texts.template("notice", rule.id)
    text = _fill(txt_t, values, is_html=False)
    html_values = dict(values, advice=_paragraphs_html(advice), release_text=release_html)
    body_html = _fill(html_t, html_values, is_html=True,
                      raw=("rules_html", "advice", "release_text"))
    key = "supervisor" if kind == "supervisor" else "forward" if kind == "forward" else action
    subject = texts.get("subject", key, subject=(req.subject or no_subject)[:120],
                        sender=sender_name)
    return f"{texts.get('words', 'subject_prefix')} {subject}", text, body_html


@dataclass(frozen=True)
class HeldItem:
    """A notice the rate limit held back, as the summary lists it (kept in the limiter's
    database until the summary is sent)."""

    txid: str
    received: float
    subject: str
    action: str
    titles: tuple[str, ...]   # rule ids; the summary words them in the reader's language
    internal: bool = False    # to colleagues only: the titles never say "outside"

    def to_json(self) -> str:
        return json.dumps({"txid": self.txid, "received": self.received,
                           "subject": self.subject, "action": self.action,
                           "rules": list(self.titles), "internal": self.internal})

    @classmethod
    def from_json(cls, data: str) -> HeldItem:
        d = json.loads(data)
        return cls(str(d["txid"]), float(d["received"]), str(d["subject"]), str(d["action"]),
                   tuple(d["rules"]), bool(d.get("internal", False)))


def render_summary(items: Sequence[HeldItem], style: Style, policy: Policy | None, *,
                   lang: str, name: str, supervisor: str = "",
                   as_supervisor: bool = False) -> tuple[str, str, str]:
    """(subject, text, html) of the summary sent when the hour of held-back notices is over."""
    texts = style.texts(lang)
    zone = style.zone
    n = len(items)
    lines = []
    for item in items[:SUMMARY_ITEMS]:
        titles = [texts.rule(policy.rules[r], "title", item.internal)
                  if policy and r in policy.rules else r for r in item.titles]
        lines.append(texts.get("sentences", "summary_item",
                               time=texts.when(datetime.fromtimestamp(item.received, UTC), zone),
                               subject=texts.quote(item.subject or texts.get(
                                   "words", "no_subject")),
                               status=texts.data["status"].get(item.action, item.action),
                               titles=texts.join(titles), ref=item.txid))
    if n > SUMMARY_ITEMS:
        lines.append(texts.get("sentences", "summary_more", n=n - SUMMARY_ITEMS))
    intro = texts.count("sentences", "summary_supervisor" if as_supervisor else "summary", n)
    values = {
        "name": name, "summary_intro": intro, "held_text": "\n".join(f"- {x}" for x in lines),
        "held_html": "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>",
        "supervisor_text": "" if as_supervisor else (
            texts.get("sentences", "doubt_supervisor", supervisor=supervisor) if supervisor
            else texts.get("sentences", "doubt")),
        "release_text": texts.get("sentences", "summary_held", days=style.retention_days,
                                  postmaster=style.postmaster)
        if not as_supervisor and any(i.action == "quarantine" for i in items) else "",
        "postmaster": style.postmaster, "ref": items[0].txid if items else "",
        "school": style.school or texts.get("words", "school"),
    }
    txt_t, html_t = texts.template("summary")
    subject = texts.count("subject", "summary", n)
    return (f"{texts.get('words', 'subject_prefix')} {subject}",
            _fill(txt_t, values, is_html=False),
            _fill(html_t, values, is_html=True, raw=("held_html",)))


def render_outcome(outcome: str, style: Style, *, lang: str, name: str, subject: str,
                   recipients: Sequence[str], received: datetime,
                   ref: str) -> tuple[str, str, str]:
    """(subject, text, html) of the notice that an admin released or deleted a held message.
    ``outcome``: "released" or "deleted"."""
    texts = style.texts(lang)
    subject = subject or texts.get("words", "no_subject")
    values = {
        "name": name, "outcome_text": texts.get("sentences", outcome), "subject": subject,
        "recipients": ", ".join(recipients), "time": texts.when(received, style.zone),
        "ref": ref, "postmaster": style.postmaster,
        "school": style.school or texts.get("words", "school"),
    }
    txt_t, html_t = texts.template("release")
    head = texts.get("subject", outcome, subject=subject[:120])
    return (f"{texts.get('words', 'subject_prefix')} {head}",
            _fill(txt_t, values, is_html=False), _fill(html_t, values, is_html=True))


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

def auto_submitted(message: Message | None) -> str:
    if message is None:
        return ""
    return (message.header("Auto-Submitted") or ["no"])[0].strip().lower()


def wants_notice(message: Message | None, mail_from: str) -> bool:
    """False for mail no one should answer: bounces, auto-submitted mail, notices (RFC 3834)."""
    if not mail_from or message is None:
        return False
    local = mail_from.partition("@")[0].lower()
    if local in ("mailer-daemon", "postmaster") or local.startswith("owner-"):
        return False
    auto = auto_submitted(message)
    if auto and not auto.startswith("no"):
        return False
    if message.header("X-SKOT-Notice"):
        return False
    precedence = (message.header("Precedence") or [""])[0].strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return False
    ctype = message.email.get_content_type()
    return ctype != "multipart/report"


def forward_wants_notice(message: Message | None, verdict: Verdict) -> bool:
    """An automatic forward (``Auto-Submitted: auto-forwarded``) is auto-submitted, yet the
    person whose forwarding rule sent it must hear that it failed: not its author, but the
    owner of the forwarding mailbox. Never for our own notices being forwarded (a loop)."""
    if message is None or message.header("X-SKOT-Notice"):
        return False
    if not auto_submitted(message).startswith("auto-forwarded"):
        return False
    return any(r.mode == "enforce" and r.notice and r.evidence.get("forwarding_mailbox")
               for r in verdict.rules)


@dataclass(frozen=True)
class Notice:
    to: str
    kind: str  # "sender", "forward", "supervisor" or "summary"
    lang: str
    rendered: bytes
    txid: str
    rule_ids: tuple[str, ...]
    suppressed: bool = False  # held back by the rate limit: audited, not sent
    held: tuple[str, ...] = ()  # a summary: the transactions it reports
    error: str = ""  # it could not be built: audited as notice-failed, not sent


def notice_rules(verdict: Verdict, policy: Policy) -> tuple[RulePolicy, ...]:
    """Enforced rules whose policy asks for a notice (monitor mode never notifies)."""
    out = []
    for fired in verdict.rules:
        rp = policy.rules.get(fired.id)
        if rp is not None and rp.notice and fired.mode == "enforce":
            out.append(rp)
    return tuple(out)


def named_rules(verdict: Verdict, policy: Policy) -> tuple[RulePolicy, ...]:
    """Every enforced rule that fired, those that ask for a notice first: all are named."""
    asking = notice_rules(verdict, policy)
    others = tuple(rp for f in verdict.rules if f.mode == "enforce"
                   and (rp := policy.rules.get(f.id)) is not None and rp not in asking)
    return asking + others


WORDS: dict[str, dict[str, str]] = {
    "nl": {"bsn": "{n} BSN-nummer(s)", "iban": "{n} IBAN-rekeningnummer(s)",
           "people": "een tabel met {rows} personen ({columns})",
           "marking": "de markering {words}", "label": "het gevoeligheidslabel {labels}",
           "body": "in de tekst van het bericht", "subject": "in het onderwerp",
           "attachment": "in bijlage {name}", "found": "Gevonden",
           "confidence": "zekerheid: {level}", "high": "hoog", "medium": "gemiddeld",
           "low": "laag", "tag": "alleen gemarkeerd",
           "media": "in bijlage {name}: {n} foto('s) of opname(n) in het document",
           "media_file": "bijlage {name} ({type})", "uninspectable": "{name}: {reason}"},
    "en": {"bsn": "{n} BSN number(s)", "iban": "{n} IBAN account number(s)",
           "people": "a table of {rows} people ({columns})",
           "marking": "the marking {words}", "label": "the sensitivity label {labels}",
           "body": "in the message text", "subject": "in the subject",
           "attachment": "in attachment {name}", "found": "Found",
           "confidence": "confidence: {level}", "high": "high", "medium": "medium",
           "low": "low", "tag": "tagged only",
           "media": "in attachment {name}: {n} photo(s) or recording(s) in the document",
           "media_file": "attachment {name} ({type})", "uninspectable": "{name}: {reason}"},
}
COLUMNS: dict[str, dict[str, str]] = {
    "nl": {"birth_date": "geboortedatum", "pupil_number": "leerlingnummer", "bsn": "BSN",
           "phone": "telefoonnummer", "email": "e-mailadres", "address": "adres",
           "iban": "IBAN", "health": "medische gegevens"},
    "en": {"birth_date": "birth date", "pupil_number": "pupil number", "bsn": "BSN",
           "phone": "phone number", "email": "e-mail address", "address": "address",
           "iban": "IBAN", "health": "medical data"},
}


def finding_lines(evidence: Mapping[str, Any], lang: str) -> list[str]:
    """What a rule found, for the person who sent it: which signal, where (the body, the
    subject or which attachment), how many and how sure; never a value (the numbers, names
    and addresses found stay out of notices as they stay out of the audit)."""
    w = WORDS.get(lang, WORDS["en"])
    lines: list[str] = []
    for item in evidence.get("items") or []:
        if not isinstance(item, Mapping):
            continue
        name = str(item.get("name", ""))
        where = w.get(str(item.get("where", "")), w["attachment"]).format(name=name)
        if item.get("findings"):
            for f in item["findings"]:
                what = _finding_text(f, w, COLUMNS.get(lang, COLUMNS["en"]))
                level = w.get(str(f.get("confidence", "")), "")
                extra = [w["confidence"].format(level=level)] if level else []
                if f.get("action") == "tag":
                    extra.append(w["tag"])
                suffix = f" ({', '.join(extra)})" if extra else ""
                lines.append(f"{w['found']}: {what} {where}{suffix}.")
        elif item.get("reason"):
            lines.append(w["uninspectable"].format(name=name, reason=item["reason"]) + ".")
        elif item.get("embedded_images"):
            lines.append(f"{w['found']}: " + w["media"].format(
                name=name, n=item["embedded_images"]) + ".")
        elif item.get("type"):
            lines.append(f"{w['found']}: " + w["media_file"].format(
                name=name, type=item["type"]) + ".")
    return list(dict.fromkeys(lines))  # a body in text and HTML finds the same once


def _finding_text(f: Mapping[str, Any], w: Mapping[str, str], cols: Mapping[str, str]) -> str:
    sig = str(f.get("signal", ""))
    if sig in ("bsn", "iban"):
        return w[sig].format(n=f.get("count", 0))
    if sig == "people":
        columns = ", ".join(cols.get(str(c), str(c)) for c in f.get("columns") or [])
        return w["people"].format(rows=f.get("rows", 0), columns=columns)
    if sig == "marking":
        return w["marking"].format(words=", ".join(f"'{x}'" for x in f.get("words") or []))
    if sig == "label":
        return w["label"].format(labels=", ".join(f"'{x}'" for x in f.get("labels") or []
                                                  if not _is_guid(str(x))))
    return sig


def _is_guid(value: str) -> bool:
    return bool(re.fullmatch(r"\{?[0-9a-fA-F-]{36}\}?", value))


def build_mail(*, postmaster: str, to: str, subject: str, text: str, body_html: str,
               txid: str, in_reply_to: str, hostname: str,
               rule_ids: Sequence[str] = (), reply_to: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = postmaster
    msg["To"] = to
    if reply_to:  # a reply to the notice is the sender's release request (milter.selfrelease)
        msg["Reply-To"] = reply_to
    msg["Subject"] = " ".join(subject.split())
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid("notice", domain=hostname)
    if in_reply_to:
        msg["In-Reply-To"] = " ".join(in_reply_to.split())
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-SKOT-Notice"] = txid or "summary"
    if rule_ids:  # for IT: the rule ids stay out of the prose
        msg["X-SKOT-Rules"] = ", ".join(rule_ids)
    msg.set_content(text)
    msg.add_alternative(body_html, subtype="html")
    # Headers folded only past 998 octets: the default (78) folds a long subject right after
    # "Subject:", which some clients show with a leading space.
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n", max_line_length=998))


class RateLimiter:
    """At most ``per_hour`` notices per address per ``window`` seconds, across processes
    (SQLite). What is held back is kept until a summary is sent for it."""

    def __init__(self, path: Path, per_hour: int, window: float = 3600.0) -> None:
        self.per_hour = per_hour
        self.window = window
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=10)
        self._db.execute("CREATE TABLE IF NOT EXISTS sent (address TEXT, ts REAL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS held_items (address TEXT, ts REAL, "
                         "item TEXT, addressee TEXT)")
        self._lock = threading.Lock()

    def _tx(self) -> Any:
        return _Immediate(self._db, self._lock)

    def admit(self, address: str, now: float | None = None, item: HeldItem | None = None,
              addressee: Mapping[str, str] | None = None) -> tuple[bool, int]:
        """(send it?, notices held back since the last one sent). A refused one is kept
        (``item``, and whom and how to tell: ``addressee``) for the summary."""
        now = time.time() if now is None else now
        key = address.lower()
        with self._tx() as db:
            db.execute("DELETE FROM sent WHERE ts < ?", (now - self.window,))
            (count,) = db.execute("SELECT count(*) FROM sent WHERE address=?",
                                  (key,)).fetchone()
            if count >= self.per_hour:
                db.execute("INSERT INTO held_items VALUES (?, ?, ?, ?)",
                           (key, now, item.to_json() if item else "{}",
                            json.dumps(dict(addressee or {}))))
                return False, 0
            (held,) = db.execute("SELECT count(*) FROM held_items WHERE address=?",
                                 (key,)).fetchone()
            db.execute("DELETE FROM held_items WHERE address=?", (key,))
            db.execute("INSERT INTO sent VALUES (?, ?)", (key, now))
            return True, int(held)

    def next_due(self, now: float | None = None) -> float | None:
        """When the first summary falls due (its hour is over), or None: nothing held."""
        now = time.time() if now is None else now
        with self._lock:
            keys = [k for (k,) in self._db.execute("SELECT DISTINCT address FROM held_items")]
            due: float | None = None
            for key in keys:
                ts = [t for (t,) in self._db.execute(
                    "SELECT ts FROM sent WHERE address=? AND ts >= ? ORDER BY ts",
                    (key, now - self.window))]
                # free once enough of the sent ones are older than the window
                at = now if len(ts) < self.per_hour else ts[len(ts) - self.per_hour] + \
                    self.window
                due = at if due is None else min(due, at)
            return due

    def claim_due(self, now: float | None = None
                  ) -> list[tuple[str, dict[str, str], list[HeldItem]]]:
        """Summaries whose hour is over, taken out atomically (one process sends each):
        (address key, addressee, held items). Each counts as a notice sent."""
        now = time.time() if now is None else now
        out = []
        with self._tx() as db:
            db.execute("DELETE FROM sent WHERE ts < ?", (now - self.window,))
            keys = [k for (k,) in db.execute("SELECT DISTINCT address FROM held_items")]
            for key in keys:
                (count,) = db.execute("SELECT count(*) FROM sent WHERE address=?",
                                      (key,)).fetchone()
                if count >= self.per_hour:
                    continue
                rows = db.execute("SELECT item, addressee FROM held_items WHERE address=? "
                                  "ORDER BY ts", (key,)).fetchall()
                db.execute("DELETE FROM held_items WHERE address=?", (key,))
                db.execute("INSERT INTO sent VALUES (?, ?)", (key, now))
                items = [HeldItem.from_json(i) for i, _ in rows if i != "{}"]
                out.append((key, json.loads(rows[-1][1]), items))
        return out

    def close(self) -> None:
        self._db.close()


class _Immediate:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``) under the limiter's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()


@dataclass
class Notifier:
    """Builds notices for a finished transaction and sends them in the background."""

    policy: Policy
    style: Style
    hostname: str
    next_hop: str
    timeout: float
    limiter: RateLimiter
    directory: Any
    audit: Any = None              # AuditWriter
    retries: int = 3
    retry_delay: float = 5.0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _flusher: asyncio.Task[None] | None = None
    _dirty: bool = False

    def _person(self, address: str) -> tuple[str, str, str]:
        """(language, name, supervisor's address) of a school address."""
        person = self.directory.lookup(address)
        lang = person.language if person is not None and person.language else \
            self.style.language
        name = person.name if person is not None and person.name else address.partition("@")[0]
        return lang, name, person.supervisor if person is not None else ""

    def _name(self, address: str) -> str:
        return self._person(address)[1] if address else ""

    def addressee(self, req: NoticeRequest) -> tuple[str, str]:
        """(address, kind): the owner of a forwarding mailbox for an automatic forward, the
        staff member at work for mail from their private address, else the sender."""
        box = req.forwarded_by()
        if box and self.style.internal(box):
            return box, "forward"
        for fired in req.verdict.rules:
            owner = fired.evidence.get("staff_member") if fired.evidence else None
            if isinstance(owner, str) and owner:
                return owner.lower(), "sender"
        return req.mail_from.lower(), "sender"

    def plan(self, req: NoticeRequest) -> list[Notice]:
        """Who gets which notice. Only school addresses: never backscatter to outsiders.
        Notices over the rate limit come back with ``suppressed`` set."""
        if not req.rules:
            return []
        to, kind = self.addressee(req)
        if not self.style.internal(to):
            return []
        lang, name, supervisor = self._person(to)
        item = HeldItem(req.txid, req.received.timestamp(), req.subject, req.verdict.action,
                        tuple(rp.id for rp in req.rules), internal=bool(req.rcpt_tos) and all(
                            self.style.internal(r) for r in req.rcpt_tos))
        notices: list[Notice] = []
        send, held = self.limiter.admit(to, item=item, addressee={
            "to": to, "lang": lang, "name": name, "supervisor": supervisor, "kind": kind})
        if send:
            notices.append(self._notice(req, to, kind, lang, name, held,
                                        supervisor=self._name(supervisor)))
        else:
            notices.append(Notice(to, kind, lang, b"", req.txid,
                                  tuple(rp.id for rp in req.rules), suppressed=True))
        if supervisor and any(rp.notice_supervisor for rp in req.rules):
            slang, sname, _ = self._person(supervisor)
            key = f"supervisor:{supervisor}"
            sup_send, sup_held = self.limiter.admit(key, item=item, addressee={
                "to": supervisor, "lang": slang, "name": sname, "kind": "supervisor"})
            if sup_send:
                notices.append(self._notice(req, supervisor, "supervisor", slang, sname,
                                            sup_held, sender_name=name))
            else:
                notices.append(Notice(supervisor, "supervisor", slang, b"", req.txid,
                                      tuple(rp.id for rp in req.rules), suppressed=True))
        return notices

    def _notice(self, req: NoticeRequest, to: str, kind: str, lang: str, name: str,
                held: int, *, sender_name: str = "", supervisor: str = "") -> Notice:
        return build_notice(self.style, self.hostname, req, to, kind, lang, name, held,
                            sender_name=sender_name, supervisor=supervisor)

    def summaries(self, now: float | None = None) -> list[Notice]:
        """The summaries whose hour is over (claimed: no other process sends them)."""
        out = []
        for _, who, items in self.limiter.claim_due(now):
            if not items or not who.get("to"):
                continue
            rules = tuple(dict.fromkeys(r for i in items for r in i.titles))
            held = tuple(i.txid for i in items)
            try:
                supervisor = who.get("supervisor", "")
                subject, text, body_html = render_summary(
                    items, self.style, self.policy, lang=who.get("lang") or self.style.language,
                    name=who.get("name", ""), supervisor=self._name(supervisor),
                    as_supervisor=who.get("kind") == "supervisor")
                raw = build_mail(postmaster=self.style.postmaster, to=who["to"],
                                 subject=subject, text=text, body_html=body_html, txid="",
                                 in_reply_to="", hostname=self.hostname, rule_ids=rules)
            except Exception as exc:  # noqa: BLE001 - claimed: it must still leave a trace
                log.exception("a notice summary could not be built")
                out.append(Notice(who["to"], "summary", who.get("lang", ""), b"", "", rules,
                                  held=held, error=f"summary could not be built: "
                                                   f"{type(exc).__name__}: {exc}"))
                continue
            out.append(Notice(who["to"], "summary", who.get("lang", ""), raw, "", rules,
                              held=held))
        return out

    def start(self) -> None:
        """Send the summaries left over from before a restart when they fall due."""
        self._ensure_flusher()

    def _ensure_flusher(self) -> None:
        self._dirty = True
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        """Wait for the next summary to fall due and send it; ends when nothing is held
        (started again by the next notice held back)."""
        while True:
            self._dirty = False
            due = await asyncio.to_thread(self.limiter.next_due)
            if due is None:
                if self._dirty:
                    continue
                return
            await asyncio.sleep(min(max(0.0, due - time.time()), 60.0))
            try:
                batch = await asyncio.to_thread(self.summaries)
            except Exception:  # noqa: BLE001 - a summary must never take the gateway down
                log.exception("notice summaries could not be built")
                await asyncio.sleep(60.0)
                continue
            for notice in batch:
                if notice.error:
                    await self._audit("notice-failed", "", (notice.to,), notice.error,
                                      {"kind": "summary", "rules": list(notice.rule_ids),
                                       "held": list(notice.held)})
                else:
                    await self.send(notice)

    def schedule_release_copy(self, meta: Mapping[str, Any], sender: str, reason: str,
                              subject: str = "") -> None:
        """The sender released a held message themselves: their supervisor gets the notice
        of it with the reason (whatever the rule's notice_supervisor says)."""
        task = asyncio.get_running_loop().create_task(self._release_copy(meta, sender, reason,
                                                                        subject))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def release_copy(self, meta: Mapping[str, Any], sender: str, reason: str,
                     subject: str) -> Notice | None:
        return release_copy(self.policy, self.style, self.directory, self.hostname, meta,
                            sender, reason, subject)

    async def _release_copy(self, meta: Mapping[str, Any], sender: str, reason: str,
                            subject: str) -> None:
        try:
            notice = self.release_copy(meta, sender, reason, subject)
            if notice is not None:
                await self.send(notice)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a notice must never take the gateway down
            log.exception("tx=%s release copy to the supervisor failed", meta.get("txid", ""))

    def schedule(self, req: NoticeRequest) -> None:
        """Plan and send in the background: never delays or changes the client's answer."""
        task = asyncio.get_running_loop().create_task(self._run(req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, req: NoticeRequest) -> None:
        try:
            notices = await asyncio.to_thread(self.plan, req)
        except Exception as exc:  # noqa: BLE001 - a notice must never take the gateway down
            log.exception("tx=%s notice planning failed", req.txid)
            await self._audit("notice-failed", req.txid, (req.mail_from,),
                              f"notice could not be built: {type(exc).__name__}: {exc}",
                              {"kind": "sender", "rules": [rp.id for rp in req.rules]})
            return
        for i, notice in enumerate(notices):
            if notice.suppressed:
                await self._audit("notice-suppressed", notice.txid, (notice.to,),
                                  f"more than {self.limiter.per_hour} notices in an hour; "
                                  "a summary follows when the hour is over",
                                  {"kind": notice.kind, "lang": notice.lang,
                                   "rules": list(notice.rule_ids), "reason": "rate limit"})
                self._ensure_flusher()
                continue
            try:
                await self.send(notice)
            except asyncio.CancelledError:  # the ones not yet tried are failed too
                for rest in notices[i + 1:]:
                    if rest.suppressed:
                        continue
                    await self._audit("notice-failed", rest.txid, (rest.to,),
                                      "gateway stopped before the notice could be sent",
                                      {"kind": rest.kind, "lang": rest.lang,
                                       "rules": list(rest.rule_ids)})
                raise

    async def send(self, notice: Notice) -> bool:
        from milter.nexthop import NextHopError, send_message

        error = ""
        cancelled = False
        try:
            for attempt in range(1, self.retries + 1):
                try:
                    # From the postmaster, so a notice that cannot be delivered reaches IT.
                    reply = await send_message(self.next_hop, self.hostname, self.timeout,
                                               self.style.postmaster, [notice.to],
                                               notice.rendered)
                    if reply.ok:
                        error = ""
                        break
                    error = reply.line
                    if reply.code >= 500:
                        break
                except NextHopError as exc:
                    error = str(exc)
                if attempt < self.retries:
                    await asyncio.sleep(self.retry_delay * attempt)
        except asyncio.CancelledError:  # shutdown: say so in the audit trail, then stop
            error, cancelled = "gateway stopped before the notice could be sent", True
        event = "notice-failed" if error else "notice-sent"
        if error:
            log.warning("tx=%s notice to %s failed: %s", notice.txid, notice.to, error)
        evidence: dict[str, Any] = {"kind": notice.kind, "lang": notice.lang,
                                    "rules": list(notice.rule_ids)}
        if notice.held:
            evidence["held"] = list(notice.held)
        await self._audit(event, notice.txid, (notice.to,), error, evidence)
        if cancelled:
            raise asyncio.CancelledError
        return not error

    async def _audit(self, event: str, txid: str, to: tuple[str, ...], error: str,
                     evidence: dict[str, Any]) -> None:
        from milter.audit.store import AuditEvent, AuditUnavailable

        if self.audit is None:
            return
        try:
            await self.audit.append(AuditEvent(
                event=event, txid=txid, recipients=to, sender=self.style.postmaster,
                action=event, reply=error, evidence=evidence))
        except AuditUnavailable as exc:
            log.error("tx=%s notice audit failed: %s", txid, exc)

    async def drain(self, timeout: float = 10.0) -> None:
        """Let queued notices finish; those still retrying after ``timeout`` are cancelled
        and audited as ``notice-failed`` (a stop must not hang on an unreachable next hop).
        Summaries not yet due stay in the limiter's database for the next start."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

def build_notice(style: Style, hostname: str, req: NoticeRequest, to: str, kind: str,
                 lang: str, name: str, held: int, *, sender_name: str = "",
                 supervisor: str = "") -> Notice:
    """One notice, rendered and wrapped as a mail (a reply to the sender's own notice goes
    to the release address)."""
    subject, text, body_html = render(req, style, lang=lang, name=name, kind=kind,
                                      sender_name=sender_name, supervisor=supervisor,
                                      also_held=held)
    ids = tuple(rp.id for rp in req.rules)
    raw = build_mail(postmaster=style.postmaster, to=to, subject=subject, text=text,
                     body_html=body_html, txid=req.txid, in_reply_to=req.message_id,
                     hostname=hostname, rule_ids=ids,
                     reply_to=req.release_address if kind == "sender" else "")
    return Notice(to, kind, lang, raw, req.txid, ids)


def release_copy(policy: Policy, style: Style, directory: Any, hostname: str,
                 meta: Mapping[str, Any], sender: str, reason: str,
                 subject: str) -> Notice | None:
    """The supervisor's copy of a self-released message's notice, opening with the sender's
    reason (by reply or by the web view's link); None when the sender has no supervisor in
    the directory."""
    from milter.selfrelease import verdict_of

    verdict = verdict_of(meta)
    rules = tuple(rp for r in verdict.rules if (rp := policy.rules.get(r.id)))
    person = directory.lookup(sender)
    supervisor = person.supervisor if person is not None else ""
    if not rules or not supervisor:
        return None
    sup = directory.lookup(supervisor)
    lang = sup.language if sup is not None and sup.language else style.language
    who = person.name if person is not None and person.name else sender
    texts = style.texts(lang)
    env = meta.get("envelope", {})
    req = NoticeRequest(txid=str(meta.get("txid", "")), verdict=verdict, mail_from=sender,
                        rcpt_tos=tuple(env.get("rcpt_tos", [])), subject=subject,
                        message_id="",
                        received=datetime.fromtimestamp(float(meta.get("stored_at", 0)), UTC),
                        rules=rules, intro=texts.get("sentences", "self_released",
                                                     sender=who, reason=texts.quote(reason)))
    sup_name = sup.name if sup is not None and sup.name else supervisor.partition("@")[0]
    return build_notice(style, hostname, req, supervisor, "supervisor", lang, sup_name, 0,
                        sender_name=who)



def request_for(txid: str, verdict: Verdict, policy: Policy, message: Message | None,
                mail_from: str, rcpt_tos: Sequence[str],
                summary: Mapping[str, Any]) -> NoticeRequest | None:
    """A notice request if this transaction deserves one, else None."""
    if not notice_rules(verdict, policy):
        return None
    if not wants_notice(message, mail_from) and not forward_wants_notice(message, verdict):
        return None
    subject = message.subject if message is not None else str(summary.get("subject", ""))
    return NoticeRequest(txid=txid, verdict=verdict, mail_from=mail_from,
                         rcpt_tos=tuple(rcpt_tos), subject=subject,
                         message_id=message.message_id if message is not None else "",
                         received=datetime.now(UTC), rules=named_rules(verdict, policy))


__all__ = ["HeldItem", "Notice", "NoticeRequest", "Notifier", "RateLimiter", "Style", "Texts",
           "build_mail", "describe", "render", "render_outcome", "render_summary",
           "request_for", "template_problems", "text_set", "wants_notice"]

