"""The rule registry: every rule is a small function registered under its policy id.

A rule detects; the policy decides what happens (action, mode). Rule modules register on
import; ``load_all`` imports every module of this package so the registry is complete.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from milter.core.context import Context
from milter.core.message import Message
from milter.core.verdict import Finding

RuleFn = Callable[[Message, Context, Mapping[str, Any]], Finding | None]

__all__ = ["REGISTRY", "Finding", "RuleFn", "RuleSpec", "load_all", "rule"]


@dataclass(frozen=True)
class RuleSpec:
    id: str
    fn: RuleFn
    params: Mapping[str, Any]  # allowed policy params with their defaults
    # string params that take one of a few values: a typo is a config error, not a default
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


REGISTRY: dict[str, RuleSpec] = {}


def rule(rule_id: str, choices: Mapping[str, tuple[str, ...]] | None = None,
         **params: Any) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as rule ``rule_id``; keyword arguments are its policy params, and
    ``choices`` names the values a string param may take (checked when the policy loads)."""

    def register(fn: RuleFn) -> RuleFn:
        if rule_id in REGISTRY:
            raise RuntimeError(f"rule {rule_id} registered twice")
        REGISTRY[rule_id] = RuleSpec(rule_id, fn, params, dict(choices or {}))
        return fn

    return register


def load_all() -> Mapping[str, RuleSpec]:
    """Import every rule family in this package (a new family is just a new module)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY
