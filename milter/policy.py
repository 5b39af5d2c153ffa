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


def iter_errors(data: Mapping[str, Any], path: Path) -> list[ConfigError]:
    from milter.rules import load_all  # the rule families import the core, not the reverse

    registry = load_all()
    errors: list[ConfigError] = []
    for top in data:
        if top not in ("policy", "rules"):
            errors.append(ConfigError(path, top, "unknown section; allowed: [policy], [rules.ID]"))
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
    return Policy(path=path, name=str(head.get("name", path.stem)),
                  keep_subjects=bool(head.get("keep_subjects", False)), rules=rules,
                  extra={k: v for k, v in head.items() if k not in POLICY_KEYS})
