"""The web view's acts on the quarantine: the one place that releases and deletes.

Kept apart so the release logic can move (into ``milter.quarantine``) by rewiring these two
functions only. Both record who, when and why in the audit store before the page says done;
a release the next hop refuses changes nothing.
"""

from __future__ import annotations

import asyncio
import html
from dataclasses import dataclass

from milter.audit.store import AuditEvent, AuditStore
from milter.config import Config
from milter.quarantine import Entry


class ActionError(Exception):
    """The act did not happen; the message says why (shown to the admin)."""


@dataclass(frozen=True)
class QuarantineActions:
    config: Config
    store: AuditStore

    def release(self, entry: Entry, actor: str, reason: str, notify_sender: bool) -> str:
        """Deliver the held message unchanged; optionally tell its sender. The next hop's
        answer is returned."""
        from milter.commands import CommandError
        from milter.commands.quarantine import release_entry

        try:
            line = release_entry(self.config, entry, actor, reason)
        except CommandError as exc:
            raise ActionError(str(exc)) from None
        if notify_sender:
            self._tell_sender(entry, actor)
        return line

    def delete(self, entry: Entry, actor: str, reason: str) -> None:
        from milter.commands import CommandError
        from milter.commands.quarantine import audit_act

        try:
            audit_act(self.config, "quarantine-delete", entry, actor, reason=reason)
        except CommandError as exc:
            raise ActionError(str(exc)) from None
        from milter.quarantine import QuarantineStore

        QuarantineStore(self.config.quarantine_dir).delete(entry.id)

    def _tell_sender(self, entry: Entry, actor: str) -> None:
        """A short notice that the message went out after all; audited as any notice."""
        from milter.notices import build_mail
        from milter.smtp.relay import NextHopError, send_message

        env = entry.meta.get("envelope", {})
        to = str(env.get("mail_from", ""))
        txid = str(entry.meta.get("txid", ""))
        if not to:
            return
        postmaster = self.config.get("school", "postmaster")
        text = ("Uw bericht dat in quarantaine was gehouden, is na controle alsnog verstuurd.\n"
                f"Referentie: ref={txid}\n\n"
                "Your message that was held in quarantine has been reviewed and sent.\n")
        raw = build_mail(postmaster=postmaster, to=to, subject="Bericht vrijgegeven / "
                         "message released", text=text,
                         body_html=f"<pre>{html.escape(text)}</pre>", txid=txid,
                         in_reply_to="", hostname=self.config.get("gateway", "hostname"))
        error = ""
        try:
            reply = asyncio.run(send_message(
                self.config.next_hop, self.config.get("gateway", "hostname"),
                self.config.get("gateway", "next_hop_timeout"), postmaster, [to], raw))
            if not reply.ok:
                error = reply.line
        except NextHopError as exc:
            error = str(exc)
        self.store.append(AuditEvent(
            event="notice-failed" if error else "notice-sent", txid=txid, recipients=(to,),
            sender=postmaster, action="notice-failed" if error else "notice-sent",
            reply=error, actor=actor, evidence={"kind": "release", "quarantine_id": entry.id}))
