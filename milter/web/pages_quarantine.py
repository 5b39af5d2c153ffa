"""The quarantine's pages (an admin's release or delete, with a reason) and the sender's
own release by the notice's link."""

from __future__ import annotations

from milter.audit.store import AuditEvent
from milter.directory_ldap import LdapError, LoginRefused
from milter.quarantine import Entry
from milter.web import preview
from milter.web.actions import ActionError, SelfReleaseRefused
from milter.web.base import (
    MAX_REASON,
    PageBase,
    Session,
)
from milter.web.texts import T


class QuarantinePages(PageBase):
    """Held messages: an admin's release or delete, and the sender's own release."""

    # -- quarantine --------------------------------------------------------------------------
    def _quarantine(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        self.app.audit(session, "viewed", {"page": "quarantine"})
        self._render("quarantine.html", t["quarantine"], session, held=self._held(),
                     admin=session.role == "admin")

    def _quarantine_entry(self, session: Session, qid: str) -> None:
        t = T[self._lang()]
        entry = self.app.quarantine.get(qid)
        if entry is None:
            self._message(session, "404", t["not_held"].format(id=qid), 404)
            return
        self.app.audit(session, "viewed", {"page": "quarantine-preview", "id": qid,
                                           "ref": str(entry.meta.get("txid", ""))})
        headers, text = preview.preview(entry)
        self._render("quarantine_entry.html", f"{t['quarantine']}: {qid}", session,
                     h=preview.summarise(entry, self.app.config.quarantine.retention_days,
                                         lang=self._lang()),
                     headers=headers, text=text, admin=session.role == "admin")

    def _admin_entry(self, session: Session, qid: str, act: str) -> Entry | None:
        """The held message an admin acts on; None after the refusal was shown (not an
        admin: on record; not held: 404)."""
        t = T[self._lang()]
        if session.role != "admin":
            self.app.audit(session, "denied", {"page": f"quarantine-{act}", "id": qid})
            self._message(session, t["quarantine"], t["no_access"], 403)
            return None
        entry = self.app.quarantine.get(qid)
        if entry is None:
            self._message(session, "404", t["not_held"].format(id=qid), 404)
        return entry

    def _quarantine_confirm(self, session: Session, qid: str, act: str,
                            error: str = "", status: int = 200) -> None:
        t = T[self._lang()]
        entry = self._admin_entry(session, qid, act)
        if entry is None:
            return
        h = preview.summarise(entry, self.app.config.quarantine.retention_days,
                              lang=self._lang())
        self._render("quarantine_confirm.html", t[f"confirm_{act}"], session, status, h=h,
                     act=act, error=error)

    def _quarantine_act(self, session: Session, qid: str, act: str,
                        form: dict[str, str]) -> None:
        t = T[self._lang()]
        entry = self._admin_entry(session, qid, act)
        if entry is None:
            return
        reason = " ".join(form.get("reason", "").split())[:MAX_REASON]
        if not reason:
            self._quarantine_confirm(session, qid, act, t["reason_required"], 400)
            return
        actor = f"web:{session.user}"
        try:
            if act == "release":
                result = self.app.actions.release(entry, actor, reason,
                                                  form.get("notify") == "1")
                text = t["released"].format(id=qid, reply=result)
            else:
                self.app.actions.delete(entry, actor, reason)
                text = t["deleted"].format(id=qid)
        except ActionError as exc:
            self._message(session, t["quarantine"], str(exc), 502)
            return
        self._render("done.html", t["done"], session, text=text,
                     ref=str(entry.meta.get("txid", "")))

    # -- the sender's own release, by the notice's link ----------------------------------
    def _own_home(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        self._message(session, t["sr_title"], t["sr_home"], 200, "ok")

    def _self_refused(self, session: Session, key: str, why: str, status: int,
                      entry: Entry | None = None, **values: str) -> None:
        """A refusal: said in words on the page, and on record (who, which message, why)."""
        t = T[self._lang()]
        text = t[key].format(user=session.user, postmaster=self.app.config.school.postmaster,
                             **values)
        txid = str(entry.meta.get("txid", "")) if entry is not None else ""
        self.app.store.append(AuditEvent(
            event="self-release-refused", action="self-release-refused", txid=txid,
            sender=session.user if session.role == "staff" else "",
            actor=f"web:{session.user}", reply=text,
            evidence={"why": why, "via": "web", "role": session.role,
                      **({"quarantine_id": entry.id} if entry is not None else {})}))
        self._message(session, t["sr_title"], text, status)

    def _own_entry(self, session: Session, token: str) -> Entry | None:
        """The held message behind the link, or None after a refusal was shown."""
        if session.role != "staff":  # an auditor or admin is not the sender
            self._self_refused(session, "sr_not_staff", f"signed in as {session.role}", 403)
            return None
        try:
            return self.app.actions.own_held(token, session.user, self.app.store)
        except SelfReleaseRefused as exc:
            status = {"sr_unknown": 404, "sr_limit": 429, "sr_already": 409,
                      "sr_busy": 409}.get(exc.key, 403)
            per_day = str(self.app.actions.policy.self_release.per_day
                          if self.app.actions.policy is not None else 0)
            self._self_refused(session, exc.key, exc.why, status, exc.entry, n=per_day)
            return None

    def _still_staff(self, session: Session, entry: Entry) -> bool:
        """A session from the school account is asked of the directory again before it
        releases: a teacher the school disabled (or moved out of staff) since she signed in
        is refused and signed out. A directory that cannot answer releases nothing either."""
        directory = self.app.staff_directory
        if session.via != "directory" or directory is None:
            return True
        try:
            directory.recheck(session.user)
        except LoginRefused as exc:
            self._self_refused(session, "sr_left_directory", exc.why, 403, entry)
            with self.app.lock:
                self.app.sessions = {k: v for k, v in self.app.sessions.items()
                                     if v is not session}
            return False
        except LdapError as exc:
            self._self_refused(session, "directory_down", f"directory unavailable: {exc}",
                               503, entry)
            return False
        return True

    def _own_page(self, session: Session, token: str, error: str = "",
                  status: int = 200) -> None:
        entry = self._own_entry(session, token)
        if entry is None:
            return
        t = T[self._lang()]
        lang = self._lang()
        if not error:
            self.app.audit(session, "viewed", {"page": "self-release", "id": entry.id,
                                               "ref": str(entry.meta.get("txid", ""))})
        self._render("self_release.html", t["sr_title"], session, status, error=error,
                     h=preview.summarise(entry, self.app.config.quarantine.retention_days,
                                         lang=lang),
                     why=self.app.actions.reasons(entry, lang), token=token)

    def _own_release(self, session: Session, token: str, form: dict[str, str]) -> None:
        t = T[self._lang()]
        entry = self._own_entry(session, token)
        if entry is None:
            return
        reason = " ".join(form.get("reason", "").split())[:MAX_REASON]
        if not reason:
            self.app.store.append(AuditEvent(
                event="self-release-refused", action="self-release-refused",
                txid=str(entry.meta.get("txid", "")), sender=session.user,
                actor=f"web:{session.user}", reply=t["sr_reason_required"],
                evidence={"why": "no reason given", "via": "web", "quarantine_id": entry.id}))
            self._own_page(session, token, t["sr_reason_required"], 400)
            return
        if not self._still_staff(session, entry):
            return
        try:
            line = self.app.actions.self_release(entry, session.user, reason)
        except SelfReleaseRefused as exc:
            self._self_refused(session, exc.key, exc.why, 409, exc.entry)
            return
        except ActionError as exc:
            self._message(session, t["sr_title"], t["sr_failed"].format(error=str(exc)), 502)
            return
        self.app.store.append(AuditEvent(
            event="self-release", action="self-release", txid=str(entry.meta.get("txid", "")),
            sender=session.user, actor=f"web:{session.user}", reply=line,
            recipients=tuple(entry.meta.get("envelope", {}).get("rcpt_tos", [])),
            evidence={"quarantine_id": entry.id, "released_txid": entry.meta.get("txid", ""),
                      "reason": reason, "next_hop_reply": line, "via": "web"}))
        self._message(session, t["sr_title"], t["sr_done"], 200, "ok")
