"""The web view's acts on the quarantine: the one place that releases and deletes.

Both go through ``milter.quarantine`` (as the CLI does): the entry is claimed first, so two
admins clicking at once deliver it once; who, when and why are on record before the page says
done; a release the next hop refuses changes nothing. A teacher's own release by the notice's
link takes the same way (the same claim as a release by reply, the same daily limit).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from milter import quarantine as quarantine_mod
from milter import selfrelease
from milter.config import Config
from milter.directory import EMPTY
from milter.policy import Policy, SelfRelease
from milter.quarantine import Entry, Quarantine


class ActionError(Exception):
    """The act did not happen; the message says why (shown to the admin)."""


class SelfReleaseRefused(ActionError):
    """A teacher's own release refused: ``key`` names the page's words, ``why`` is what the
    audit record says; ``entry`` is the held message when the link was a real one."""

    def __init__(self, key: str, why: str, entry: Entry | None = None) -> None:
        super().__init__(why)
        self.key, self.why, self.entry = key, why, entry


@dataclass(frozen=True)
class QuarantineActions:
    config: Config
    quarantine: Quarantine
    policy: Policy | None = None  # its [self_release]: what a teacher may release themselves
    directory: Any = EMPTY        # who is whose supervisor (the release copy)

    def release(self, entry: Entry, actor: str, reason: str, notify_sender: bool) -> str:
        """Deliver the held message unchanged; tell its sender when asked to. The next hop's
        answer is returned."""
        try:
            return quarantine_mod.release(self.config, self.quarantine, entry, actor, reason,
                                          notify=notify_sender)
        except quarantine_mod.ActionFailed as exc:
            raise ActionError(str(exc)) from None

    def delete(self, entry: Entry, actor: str, reason: str) -> None:
        try:
            quarantine_mod.delete(self.config, self.quarantine, entry, actor, reason)
        except quarantine_mod.ActionFailed as exc:
            raise ActionError(str(exc)) from None

    # -- the sender's own release, by the notice's link ---------------------------------------
    def _rules(self) -> SelfRelease:
        return self.policy.self_release if self.policy is not None else SelfRelease()

    def own_held(self, token: str, user: str, audit: Any) -> Entry:
        """The held message this link is for, when ``user`` (a signed-in staff member) may
        release it themselves now; else SelfReleaseRefused. Both are needed: the token from
        the notice and being its sender. ``audit``: the store the daily limit is counted in."""
        rules = self._rules()
        entry = None
        if selfrelease.valid_token(token):
            entry = quarantine_mod.find_by_token(self.quarantine,
                                                 selfrelease.token_hash(token))
        if entry is None and selfrelease.valid_token(token) and selfrelease.handled(
                audit, selfrelease.token_hash(token), self.config.quarantine.retention_days + 1):
            raise SelfReleaseRefused("sr_already", "already released or deleted")
        if entry is None and selfrelease.valid_token(token) and quarantine_mod.find_by_token(
                self.quarantine, selfrelease.token_hash(token), in_progress=True):
            # an admin (or her own reply) is releasing or deleting it this very moment
            raise SelfReleaseRefused("sr_busy", "being released or deleted just now")
        if entry is None:
            raise SelfReleaseRefused("sr_unknown", "unknown link")
        sender = str(entry.meta.get("envelope", {}).get("mail_from", "")).lower()
        if not sender or sender != user.lower():
            raise SelfReleaseRefused("sr_not_sender", "only the original sender may release it",
                                     entry)
        if not selfrelease.eligible(rules, selfrelease.verdict_of(entry.meta)):
            raise SelfReleaseRefused("sr_not_eligible", "the policy does not let the sender "
                                     "release this message", entry)
        if selfrelease.released_today(audit, sender) >= rules.per_day:
            raise SelfReleaseRefused("sr_limit", f"daily limit of {rules.per_day} reached",
                                     entry)
        return entry

    def reasons(self, entry: Entry, lang: str) -> list[str]:
        """Why it is held, in the notice's own words (title, article, what was found)."""
        from milter.notices import Style, describe

        texts = Style.from_config(self.config).texts(lang)
        sender = str(entry.meta.get("envelope", {}).get("mail_from", ""))
        out = []
        for fired in selfrelease.verdict_of(entry.meta).enforced:
            rp = self.policy.rules.get(fired.id) if self.policy is not None else None
            if rp is None:
                out.append(fired.id)
                continue
            out.append(f"{texts.rule(rp, 'title')} ({texts.articles(rp)}): "
                       f"{describe(texts, rp, fired, sender)}.")
        return out

    def self_release(self, entry: Entry, user: str, reason: str) -> str:
        """Release ``entry`` for its sender, once (the quarantine's claim: a second attempt,
        by link, reply or admin, finds it taken), on record with the reason; the supervisor
        gets the copy with the reason. Returns the next hop's answer."""
        try:
            subject = quarantine_mod.subject_of(entry.raw)
        except OSError:  # gone under us: the claim below says so
            subject = ""
        try:
            line = asyncio.run(quarantine_mod.release_async(
                self.config, self.quarantine, entry, selfrelease.actor(user),
                {"reason": reason, "self_release": True, "via": "web"}))
        except quarantine_mod.AlreadyTaken:
            raise SelfReleaseRefused("sr_already", "already released", entry) from None
        except quarantine_mod.ActionFailed as exc:
            raise ActionError(str(exc)) from None
        if self.policy is not None:
            quarantine_mod.tell_supervisor(self.config, self.policy, self.directory, entry,
                                           user.lower(), reason, subject)
        return line
