"""Run the policy's rules over one message and combine their findings into a verdict.

The strongest enforced action wins (reject > quarantine > tag > accept); rules in monitor mode
are listed and audited but never raise the action, which is how schools roll a rule out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from milter.core.context import Context
from milter.core.limits import OutOfTime
from milter.core.message import Message
from milter.core.verdict import STRENGTH, Finding, FiredRule, Verdict, reply_line
from milter.policy import Policy, RulePolicy

# A rule: detects in a message, given its context and its policy parameters.
Rule = Callable[[Message, Context, Mapping[str, Any]], Finding | None]

log = logging.getLogger(__name__)


class RuleCrashed(Exception):
    """A rule raised: a bug or a transient fault; the front answers 451 and logs it."""


@dataclass(frozen=True)
class Engine:
    """The policy's rules, by id (``milter.rules.load_all`` gives them; the core does not
    import the rule families, they import the core)."""

    policy: Policy
    rules: Mapping[str, Rule]

    def evaluate(self, message: Message, ctx: Context) -> Verdict:
        fired: list[tuple[RulePolicy, FiredRule]] = []
        for rp in self.policy.rules.values():
            fn = self.rules[rp.id]
            try:
                finding = fn(message, ctx, rp.params)
            except OutOfTime:
                raise  # not a rule bug: the caller makes the message A1.uninspectable
            except Exception as exc:  # noqa: BLE001 - a rule bug must tempfail, not crash
                log.exception("rule %s failed", rp.id)
                raise RuleCrashed(f"{rp.id}: {type(exc).__name__}") from exc
            if finding is not None:
                fired.append((rp, _lawful(self.policy, rp, _fired(rp, finding), message,
                                          ctx)))
        return combine(fired, ctx)


def _fired(rp: RulePolicy, finding: Finding) -> FiredRule:
    action = rp.action
    if finding.transient:
        action = "tempfail"
    elif finding.max_action is not None and STRENGTH[finding.max_action] < STRENGTH[action]:
        action = finding.max_action
    return FiredRule(id=rp.id, article=rp.article, action=action, mode=rp.mode,
                     reason=finding.reason, evidence=finding.evidence, notice=rp.notice)


def _lawful(policy: Policy, rp: RulePolicy, fr: FiredRule, message: Message,
            ctx: Context) -> FiredRule:
    """Confidential mail a school may send: to approved partners only, or through a
    secure-mail service, it is tagged (and audited with the partner and the legal ground)
    instead of held. The finding itself is kept whole."""
    if STRENGTH[fr.action] <= STRENGTH["tag"] or fr.action == "tempfail":
        return fr
    external = ctx.external_recipients
    partners = policy.partners_for(rp.id, external) if external else ()
    if partners:
        return replace(fr, action="tag", evidence={
            **fr.evidence, "partners": [p.name for p in partners],
            "grounds": sorted({p.ground for p in partners})})
    secure = policy.secure_mail
    if rp.id in secure.rules and secure.headers:
        present = sorted({name.lower() for name, _ in message.headers} & set(secure.headers))
        if present:
            return replace(fr, action="tag", evidence={**fr.evidence,
                                                       "protected_by": present})
    return fr


def combine(fired: list[tuple[RulePolicy, FiredRule]], ctx: Context) -> Verdict:
    ref = ctx.envelope.txid
    action, decisive = "accept", None
    for rp, fr in fired:
        if fr.mode == "enforce" and STRENGTH[fr.action] > STRENGTH[action]:
            action, decisive = fr.action, rp
    if action == "tempfail" and decisive is not None:
        reply = reply_line("451 4.4.3", f"[{decisive.id}] {decisive.article}: tijdelijke "
                           "DNS-storing, probeer later opnieuw / temporary DNS failure, try "
                           "again later" + (f" ref={ref}" if ref else ""))
    elif action == "reject" and decisive is not None:
        reply = _refusal(decisive, [rp for rp, fr in fired if fr.mode == "enforce"], ref)
    elif action == "quarantine":
        reply = reply_line("250 2.0.0", "Ok: bericht vastgehouden voor controle / "
                           "message held for review" + (f" ref={ref}" if ref else ""))
    else:
        reply = reply_line("250 2.0.0", "Ok" + (f" ref={ref}" if ref else ""))
    return Verdict(action=action, direction=ctx.direction, smtp_reply=reply,
                   rules=tuple(fr for _, fr in fired), ref=ref)


def _refusal(decisive: RulePolicy, enforced: list[RulePolicy], ref: str) -> str:
    """``550 5.7.1 [ids] articles: reasons (nl) / reasons (en) ref=``: every enforced rule
    that fired is named, the refusing ones first; when all reasons do not fit in one reply
    line, the ids stay and the first reason speaks for them (the ref is never cut off)."""
    rules = [decisive, *(rp for rp in enforced if rp.id != decisive.id)]
    ids = ", ".join(rp.id for rp in rules)
    articles = ", ".join(dict.fromkeys(rp.article for rp in rules))
    tail = f" ref={ref}" if ref else ""
    for shown in (rules, rules[:1]):
        text = (f"[{ids}] {articles}: " + "; ".join(rp.text("reason", "nl") for rp in shown)
                + " / " + "; ".join(rp.text("reason", "en") for rp in shown))
        line = reply_line("550 5.7.1", text + tail)
        if not line.endswith("...") or shown is not rules:
            break
    if line.endswith("...") and tail:  # keep the reference whatever the length
        line = line[: len(line) - len(tail) - 3] + "..." + tail
    return line
