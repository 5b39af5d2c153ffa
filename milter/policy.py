"""The policy file: which rules run, with which action, mode, params and texts.

Policy is data (``policies/*.toml``) so a school can change an action or roll a rule out in
monitor mode without touching code. A site policy says ``[policy] extends = "skot"`` and names
only what the school changes: its ``[policy]`` keys replace the bundled ones, a
``[rules."ID"]`` table changes only the keys it gives (``params`` key by key), so an update of
the bundled policy reaches the school without touching the school's file. Modes: a rule's own
``mode`` pins it; a rule without one follows ``[policy] default_mode``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milter.config import BUNDLED_POLICY, ConfigError, read_toml
from milter.core.verdict import MODES, RULE_ACTIONS

TEXT_KEYS = ("title_nl", "title_en", "reason_nl", "reason_en", "advice_nl", "advice_en")
RULE_KEYS = {"article", "articles", "action", "mode", "notice", "notice_supervisor", "enabled",
             "params", *TEXT_KEYS}
POLICY_KEYS = {"name", "version", "default_mode", "keep_subjects", "extends"}
# ``extends = NAME``: the bundled policies a site policy may start from.
BASES = {"skot": BUNDLED_POLICY}


def read(path: Path) -> dict[str, Any]:
    """The policy file as data, merged over its base when it says ``extends``."""
    data = read_toml(path)
    head = data.get("policy")
    if not isinstance(head, dict) or "extends" not in head:
        return data
    name = head["extends"]
    if name not in BASES:
        raise ConfigError(path, "policy.extends", f"no bundled policy {name!r}; allowed: "
                          + ", ".join(f'"{b}"' for b in BASES))
    return merge(read_toml(BASES[name]), data)


def merge(base: Mapping[str, Any], site: Mapping[str, Any]) -> dict[str, Any]:
    """``site`` over ``base``: tables key by key (a rule's params too), other values replaced."""
    out: dict[str, Any] = dict(base)
    for key, value in site.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge(old, value)
        else:
            out[key] = value
    head = out.get("policy")
    if isinstance(head, dict):
        head.pop("extends", None)
    return out
PARTNER_KEYS = {"name", "ground", "domains", "addresses", "rules"}
SECURE_MAIL_KEYS = {"headers", "rules"}
SELF_RELEASE_KEYS = {"rules", "max_confidence", "never_signals", "per_day", "local_part"}
CONFIDENCES = ("low", "medium", "high")
# Rules an approved partner or a secure-mail service turns from holding into tagging.
LAWFUL_RULES = ("A1.confidential-attachment", "A1.uninspectable")


@dataclass(frozen=True)
class Partner:
    """An approved recipient of confidential mail (a samenwerkingsverband, youth care, the
    GGD), with the legal ground the school relies on: mail to it is tagged and audited
    instead of held, for the rules listed."""

    name: str
    ground: str
    domains: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    rules: tuple[str, ...] = LAWFUL_RULES

    def covers(self, address: str) -> bool:
        addr = address.lower()
        domain = addr.rpartition("@")[2]
        return addr in self.addresses or any(domain == d or domain.endswith("." + d)
                                             for d in self.domains)


@dataclass(frozen=True)
class SelfRelease:
    """Which held messages the sender may release themselves, with a reason (``rules``
    empty: none). Findings above ``max_confidence`` or of a ``never_signals`` kind (a pupil
    list) always wait for an admin; ``per_day`` caps it per person."""

    rules: tuple[str, ...] = ()
    max_confidence: str = "medium"
    never_signals: tuple[str, ...] = ("people",)
    per_day: int = 3
    local_part: str = "vrijgeven"


@dataclass(frozen=True)
class SecureMail:
    """Header fields by which a secure-mail service (the message is only a link to it) is
    recognised; for ``rules`` such a message is tagged, not held."""

    headers: tuple[str, ...] = ()
    rules: tuple[str, ...] = LAWFUL_RULES


@dataclass(frozen=True)
class RulePolicy:
    id: str
    article: str
    articles: tuple[str, ...]
    action: str
    mode: str
    notice: bool
    notice_supervisor: bool
    texts: Mapping[str, str]
    params: Mapping[str, Any]

    def text(self, key: str, lang: str = "nl") -> str:
        return self.texts.get(f"{key}_{lang}") or self.texts.get(f"{key}_nl", "")


@dataclass(frozen=True)
class Policy:
    path: Path
    name: str
    keep_subjects: bool
    rules: Mapping[str, RulePolicy] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    partners: tuple[Partner, ...] = ()
    secure_mail: SecureMail = SecureMail()
    self_release: SelfRelease = SelfRelease()

    def partners_for(self, rule_id: str, recipients: tuple[str, ...]) -> tuple[Partner, ...]:
        """The partners that cover every one of ``recipients`` for ``rule_id`` (empty when
        any recipient is not an approved partner for that rule)."""
        found: dict[str, Partner] = {}
        for rcpt in recipients:
            match = next((p for p in self.partners
                          if rule_id in p.rules and p.covers(rcpt)), None)
            if match is None:
                return ()
            found.setdefault(match.name, match)
        return tuple(found.values())


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def _partner_errors(data: Any, path: Path, known: Any) -> list[ConfigError]:
    errors: list[ConfigError] = []
    if not isinstance(data, list):
        return [ConfigError(path, "partners", "expected [[partners]] tables")]
    for i, spec in enumerate(data, 1):
        key = f"partners[{i}]"
        if not isinstance(spec, dict):
            errors.append(ConfigError(path, key, "expected a table"))
            continue
        for k in spec:
            if k not in PARTNER_KEYS:
                errors.append(ConfigError(path, f"{key}.{k}", "unknown key; allowed: "
                                          + ", ".join(sorted(PARTNER_KEYS))))
        for k in ("name", "ground"):
            if not isinstance(spec.get(k), str) or not spec.get(k):
                errors.append(ConfigError(path, f"{key}.{k}", "required: "
                                          + ("who it is" if k == "name" else
                                             "the legal ground, e.g. \"Wet passend onderwijs\"")))
        for k in ("domains", "addresses", "rules"):
            if k in spec and not _str_list(spec[k]):
                errors.append(ConfigError(path, f"{key}.{k}", "expected a list of strings"))
        if not spec.get("domains") and not spec.get("addresses"):
            errors.append(ConfigError(path, f"{key}.domains",
                                      "give domains or addresses (or both)"))
        for rid in spec.get("rules", []) if _str_list(spec.get("rules", [])) else []:
            if rid not in known:
                errors.append(ConfigError(path, f"{key}.rules", f"no such rule {rid!r}"))
    return errors


def _self_release_errors(data: Any, path: Path, known: Any) -> list[ConfigError]:
    if not isinstance(data, dict):
        return [ConfigError(path, "self_release", "expected a table [self_release]")]
    errors = [ConfigError(path, f"self_release.{k}", "unknown key; allowed: "
                          + ", ".join(sorted(SELF_RELEASE_KEYS)))
              for k in data if k not in SELF_RELEASE_KEYS]
    for k in ("rules", "never_signals"):
        if k in data and not (_str_list(data[k]) or data[k] == []):
            errors.append(ConfigError(path, f"self_release.{k}", "expected a list of strings"))
    for rid in data.get("rules", []) if _str_list(data.get("rules", [])) else []:
        if rid not in known:
            errors.append(ConfigError(path, "self_release.rules", f"no such rule {rid!r}"))
    if data.get("max_confidence", "medium") not in CONFIDENCES:
        errors.append(ConfigError(path, "self_release.max_confidence",
                                  "expected one of " + ", ".join(f'"{c}"' for c in CONFIDENCES)))
    per_day = data.get("per_day", 3)
    if isinstance(per_day, bool) or not isinstance(per_day, int) or per_day < 0:
        errors.append(ConfigError(path, "self_release.per_day", "expected a whole number >= 0"))
    local = data.get("local_part", "vrijgeven")
    if not isinstance(local, str) or not local.replace("-", "").replace(".", "").isalnum():
        errors.append(ConfigError(path, "self_release.local_part",
                                  "expected letters, digits, dots or dashes, e.g. \"vrijgeven\""))
    return errors


def _secure_mail_errors(data: Any, path: Path) -> list[ConfigError]:
    if not isinstance(data, dict):
        return [ConfigError(path, "secure_mail", "expected a table [secure_mail]")]
    errors = [ConfigError(path, f"secure_mail.{k}", "unknown key; allowed: headers, rules")
              for k in data if k not in SECURE_MAIL_KEYS]
    for k in ("headers", "rules"):
        if k in data and not _str_list(data[k]):
            errors.append(ConfigError(path, f"secure_mail.{k}", "expected a list of strings"))
    return errors


def iter_errors(data: Mapping[str, Any], path: Path) -> list[ConfigError]:
    from milter.rules import load_all  # the rule families import the core, not the reverse

    registry = load_all()
    errors: list[ConfigError] = []
    for top in data:
        if top not in ("policy", "rules", "partners", "secure_mail", "self_release"):
            errors.append(ConfigError(path, top, "unknown section; allowed: [policy], "
                                      "[rules.ID], [[partners]], [secure_mail], "
                                      "[self_release]"))
    if "self_release" in data:
        errors += _self_release_errors(data["self_release"], path, registry)
    if "partners" in data:
        errors += _partner_errors(data["partners"], path, registry)
    if "secure_mail" in data:
        errors += _secure_mail_errors(data["secure_mail"], path)
    head = data.get("policy", {})
    for key in head:
        if key not in POLICY_KEYS:
            errors.append(ConfigError(path, f"policy.{key}",
                                      "unknown key; allowed: " + ", ".join(sorted(POLICY_KEYS))))
    if head.get("default_mode", "enforce") not in MODES:
        errors.append(ConfigError(path, "policy.default_mode",
                                  "expected \"enforce\" or \"monitor\""))
    rules = data.get("rules", {})
    if not isinstance(rules, dict) or not rules:
        errors.append(ConfigError(path, "rules", "expected at least one [rules.\"ID\"] table"))
        return errors
    for rid, spec in rules.items():
        key = f"rules.\"{rid}\""
        if rid not in registry:
            errors.append(ConfigError(path, key, "no such rule; known rules: "
                                      + ", ".join(sorted(registry))))
            continue
        if not isinstance(spec, dict):
            errors.append(ConfigError(path, key, "expected a table"))
            continue
        for k in spec:
            if k not in RULE_KEYS:
                errors.append(ConfigError(path, f"{key}.{k}", "unknown key; allowed: "
                                          + ", ".join(sorted(RULE_KEYS))))
        if not isinstance(spec.get("article"), str) or not spec.get("article"):
            errors.append(ConfigError(path, f"{key}.article", "required, e.g. \"B1\""))
        if spec.get("action") not in RULE_ACTIONS:
            errors.append(ConfigError(path, f"{key}.action",
                                      "expected one of " + ", ".join(RULE_ACTIONS)))
        if spec.get("mode", head.get("default_mode", "enforce")) not in MODES:
            errors.append(ConfigError(path, f"{key}.mode", "expected \"enforce\" or \"monitor\""))
        for k in ("reason_nl", "reason_en"):
            if not isinstance(spec.get(k), str) or not spec.get(k):
                errors.append(ConfigError(path, f"{key}.{k}", "required: a one-line reason"))
        for k in ("notice", "notice_supervisor", "enabled"):
            if k in spec and not isinstance(spec[k], bool):
                errors.append(ConfigError(path, f"{key}.{k}", "expected true or false"))
        params = spec.get("params", {})
        allowed = registry[rid].params
        if not isinstance(params, dict):
            errors.append(ConfigError(path, f"{key}.params", "expected a table"))
            continue
        for p, v in params.items():
            if p not in allowed:
                errors.append(ConfigError(path, f"{key}.params.{p}", "unknown param; allowed: "
                                          + (", ".join(sorted(allowed)) or "none")))
            elif allowed[p] is not None and type(v) is not type(allowed[p]):
                errors.append(ConfigError(path, f"{key}.params.{p}",
                                          f"expected {type(allowed[p]).__name__}, got {v!r}"))
            elif p in registry[rid].choices and v not in registry[rid].choices[p]:
                errors.append(ConfigError(path, f"{key}.params.{p}", "expected one of "
                                          + ", ".join(f'"{c}"' for c in registry[rid].choices[p])
                                          + f", got {v!r}"))
    return errors


def load(path: Path) -> Policy:
    data = read(path)
    errors = iter_errors(data, path)
    if errors:
        raise errors[0]
    from milter.rules import load_all  # the rule families import the core, not the reverse

    registry = load_all()
    head = data.get("policy", {})
    default_mode = head.get("default_mode", "enforce")
    rules: dict[str, RulePolicy] = {}
    for rid, spec in data["rules"].items():
        if not spec.get("enabled", True):
            continue
        params = dict(registry[rid].params)
        params.update(spec.get("params", {}))
        article = spec["article"]
        rules[rid] = RulePolicy(
            id=rid, article=article, articles=tuple(spec.get("articles", [article])),
            action=spec["action"], mode=spec.get("mode", default_mode),
            notice=bool(spec.get("notice", False)),
            notice_supervisor=bool(spec.get("notice_supervisor", False)),
            texts={k: spec[k] for k in TEXT_KEYS if k in spec}, params=params)
    partners = tuple(Partner(name=p["name"], ground=p["ground"],
                             domains=tuple(d.lower().lstrip("@") for d in p.get("domains", [])),
                             addresses=tuple(a.lower() for a in p.get("addresses", [])),
                             rules=tuple(p.get("rules", LAWFUL_RULES)))
                     for p in data.get("partners", []))
    sm = data.get("secure_mail", {})
    secure = SecureMail(headers=tuple(h.lower() for h in sm.get("headers", [])),
                        rules=tuple(sm.get("rules", LAWFUL_RULES)))
    sr = data.get("self_release", {})
    self_release = SelfRelease(rules=tuple(sr.get("rules", [])),
                               max_confidence=str(sr.get("max_confidence", "medium")),
                               never_signals=tuple(sr.get("never_signals", ["people"])),
                               per_day=int(sr.get("per_day", 3)),
                               local_part=str(sr.get("local_part", "vrijgeven")).lower())
    return Policy(path=path, name=str(head.get("name", path.stem)),
                  keep_subjects=bool(head.get("keep_subjects", False)), rules=rules,
                  extra={k: v for k, v in head.items() if k not in POLICY_KEYS},
                  partners=partners, secure_mail=secure, self_release=self_release)
