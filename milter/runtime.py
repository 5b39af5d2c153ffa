"""Everything loaded from one config, and the one call every front makes: evaluate.

A ``Runtime`` is immutable; a reload builds a new one, and a transaction keeps the runtime it
started with (so a SIGHUP never changes the policy halfway through a message).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from milter import config as config_mod
from milter import policy as policy_mod
from milter.config import Config, ConfigError
from milter.core.context import Context, Envelope
from milter.core.engine import Engine
from milter.core.message import Message, Unparseable, normalize_line_endings, parse
from milter.core.results import AuthResults
from milter.core.verdict import Verdict, unparseable
from milter.directory import Directory, DirectoryError
from milter.directory_source import DirectorySource
from milter.dnsauth import strip_our_results
from milter.rules import load_all

Authenticator = Callable[[Message, Context], AuthResults]


def engine_for(policy: policy_mod.Policy) -> Engine:
    """The engine with every registered rule the policy names."""
    registry = load_all()
    return Engine(policy, {rid: registry[rid].fn for rid in policy.rules})


@dataclass(frozen=True)
class Evaluation:
    """A verdict plus what the audit keeps about the message (never its body)."""

    verdict: Verdict
    raw: bytes
    message: Message | None
    context: Context
    summary: dict[str, Any] = field(default_factory=dict)
    auth: AuthResults | None = None


@dataclass(frozen=True)
class Runtime:
    config: Config
    policy: policy_mod.Policy
    directory: Directory
    engine: Engine

    @classmethod
    def load(cls, path: str | None = None) -> Runtime:
        """Load config, policy and directory; raise ConfigError with file and key on problems."""
        cfg = config_mod.load(path)
        return cls.from_config(cfg)

    @classmethod
    def from_config(cls, cfg: Config) -> Runtime:
        pol = policy_mod.load(cfg.policy_path)
        try:
            # CSV: read now; LDAP: the last good copy on disk (the network is read in the
            # background by the server's DirectorySource, never here).
            directory = DirectorySource(cfg).initial()
        except DirectoryError as exc:
            more = len(exc.problems) - 1
            raise ConfigError(exc.file, f"line {exc.line}: {exc.column}", exc.message + (
                f" (and {more} more: skot-milter config check lists them)" if more else "")
                              ) from None
        return cls(cfg, pol, directory, engine_for(pol))

    def context(self, envelope: Envelope, now: datetime | None = None) -> Context:
        return Context(envelope=envelope, school_domains=self.config.school_domains,
                       internal_networks=self.config.internal_networks,
                       directory=self.directory, now=now or datetime.now(UTC),
                       limits=self.config.inspection)

    def evaluate(self, envelope: Envelope, raw: bytes, now: datetime | None = None,
                 authenticator: Authenticator | None = None) -> Evaluation:
        """Normalise, parse once, authenticate inbound mail, run the rules.

        ``authenticator`` does the DNS work (SPF/DKIM/DMARC); without it the core stays pure.
        Raises ``milter.core.engine.RuleCrashed`` when a rule fails (the front tempfails)."""
        data = normalize_line_endings(raw)
        ctx = self.context(envelope, now)
        if authenticator is not None:
            # Remove look-alikes of our own results before anything reads the message.
            data = strip_our_results(data, self.config.gateway.hostname)
        try:
            message = parse(data)
        except Unparseable as exc:
            verdict = unparseable(ctx.direction, str(exc), envelope.txid)
            return Evaluation(verdict, data, None, ctx,
                              {"parse_error": str(exc), "size": len(data)})
        auth = None
        if authenticator is not None and ctx.direction == "inbound":
            auth = authenticator(message, ctx)
            ctx = replace(ctx, extras={**ctx.extras, "auth": auth})
        verdict = self.engine.evaluate(message, ctx)
        summary = self.summarize(message, data)
        if auth is not None:
            summary["authentication"] = auth.header_value(self.config.gateway.hostname)
        return Evaluation(verdict, data, message, ctx, summary, auth)

    def summarize(self, message: Message, data: bytes) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "message_id": message.message_id,
            "size": len(data),
            "sha256": message.body_sha256,
            "attachments": [p.evidence() for p in message.attachments],
        }
        if message.defects:
            summary["defects"] = sorted(set(message.defects))
        if self.policy.keep_subjects:
            summary["subject"] = message.subject
        return summary
