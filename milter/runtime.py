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
from milter.core.engine import Engine, combine
from milter.core.limits import OutOfTime, reset_deadline, set_deadline
from milter.core.message import Message, Unparseable, normalize_line_endings, parse
from milter.core.results import AuthResults
from milter.core.verdict import FiredRule, Verdict, unparseable
from milter.directory import Directory, DirectoryError
from milter.directory_source import DirectorySource
from milter.dnsauth import strip_our_results
from milter.policy import RulePolicy
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
        Raises ``milter.core.engine.RuleCrashed`` when a rule fails (the front tempfails).
        Past ``[inspection] time_budget`` the readers and detectors stop (``OutOfTime``) and
        the message is ``A1.uninspectable``: see ``out_of_time``."""
        token = set_deadline(self.config.inspection.time_budget)
        try:
            return self._evaluate(envelope, raw, now, authenticator)
        except OutOfTime:
            return self.out_of_time(envelope, raw, now)
        finally:
            reset_deadline(token)

    def out_of_time(self, envelope: Envelope, raw: bytes,
                    now: datetime | None = None) -> Evaluation:
        """The verdict for a message whose inspection ran out of time: ``A1.uninspectable``
        as the policy configures it (quarantine in the board's policy), so that a message
        we could not check is held, never passed and never a stall."""
        data = normalize_line_endings(raw)
        ctx = self.context(envelope, now)
        rp = self.policy.rules.get("A1.uninspectable") or RulePolicy(
            id="A1.uninspectable", article="A1", articles=("A1",), action="quarantine",
            mode="enforce", notice=False, notice_supervisor=False, texts={}, params={})
        why = f"inspection time budget of {self.config.inspection.time_budget:g}s exhausted"
        fired = FiredRule(id=rp.id, article=rp.article, action=rp.action, mode=rp.mode,
                          reason=f"cannot inspect: {why}",
                          evidence={"items": [{"name": "(message)", "size": len(data),
                                               "reason": why}],
                                    "external_recipients": len(ctx.external_recipients)},
                          notice=rp.notice)
        return Evaluation(combine([(rp, fired)], ctx), data, None, ctx,
                          {"size": len(data), "inspection": why})

    def _evaluate(self, envelope: Envelope, raw: bytes, now: datetime | None,
                  authenticator: Authenticator | None) -> Evaluation:
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
