"""The web view's acts on the quarantine: the one place that releases and deletes.

Both go through ``milter.quarantine`` (as the CLI does): the entry is claimed first, so two
admins clicking at once deliver it once; who, when and why are on record before the page says
done; a release the next hop refuses changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from milter import quarantine as quarantine_mod
from milter.config import Config
from milter.quarantine import Entry, Quarantine


class ActionError(Exception):
    """The act did not happen; the message says why (shown to the admin)."""


@dataclass(frozen=True)
class QuarantineActions:
    config: Config
    quarantine: Quarantine

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
