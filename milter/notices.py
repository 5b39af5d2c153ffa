"""Notices: tell a staff member, in plain words, what was stopped, why and what to do instead.

Templates live with the policy (``policies/notices/<lang>/notice.txt|html``, optionally
``<RULE-ID>.txt|html``) so a school can word them. Notices go out from the postmaster address
through the next hop *after* the client has its answer, never to outside addresses (no
backscatter), never for auto-submitted mail, bounces or notices (RFC 3834), and at most
``notices.rate_per_hour`` per sender (the rest are summarised in the next one).
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import sqlite3
import string
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from milter.core.message import Message
from milter.core.verdict import Verdict
from milter.policy import Policy, RulePolicy

log = logging.getLogger("skot-milter.notices")

PLACEHOLDERS = frozenset({
    "name", "action_text", "subject", "recipients", "time", "rules_text", "rules_html",
    "advice", "release_text", "postmaster", "ref", "summary_text", "school", "rule_id",
    "article", "rule_title",
})
REQUIRED = frozenset({"subject", "recipients", "ref", "advice"})
LANGS = ("nl", "en")

ACTION_TEXT = {
    "nl": {"reject": "geweigerd en niet verstuurd",
           "quarantine": "tegengehouden en in quarantaine geplaatst; het is nog niet verstuurd",
           "tag": "verstuurd, maar gemarkeerd", "accept": "verstuurd"},
    "en": {"reject": "refused and not sent",
           "quarantine": "held in quarantine; it has not been sent",
           "tag": "sent, but marked", "accept": "sent"},
}
RELEASE_TEXT = {
    "nl": "Moet het bericht toch verstuurd worden? Vraag de beheerder ({postmaster}) het vrij "
          "te geven en noem de referentie. Wordt het niet vrijgegeven, dan wordt het na de "
          "bewaartermijn verwijderd.\n\n",
    "en": "Should the message be sent after all? Ask the administrator ({postmaster}) to "
          "release it and quote the reference. Unreleased messages are deleted after the "
          "retention period.\n\n",
}
SUBJECT = {"nl": "[Mailgateway] Je bericht is {action}: {subject}",
           "en": "[Mail gateway] Your message was {action}: {subject}"}
SUMMARY = {"nl": "Daarnaast zijn er het afgelopen uur {n} andere meldingen over je berichten "
                 "achtergehouden om je inbox niet te overspoelen.\n\n",
           "en": "In the past hour {n} other notices about your messages were held back to "
                 "avoid flooding your inbox.\n\n"}
SUPERVISOR_INTRO = {"nl": "Je ontvangt deze melding als leidinggevende van {sender}.\n\n",
                    "en": "You receive this notice as the supervisor of {sender}.\n\n"}


def fields_of(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def template_paths(directory: Path, lang: str, rule_id: str = "") -> tuple[Path, Path]:
    for stem in ([rule_id] if rule_id else []) + ["notice"]:
        txt, htm = directory / lang / f"{stem}.txt", directory / lang / f"{stem}.html"
        if txt.exists() and htm.exists():
            return txt, htm
    return directory / lang / "notice.txt", directory / lang / "notice.html"


def template_problems(directory: Path, rule_ids: Collection[str] | None = None) -> list[str]:
    """Missing templates, unknown placeholders, placeholders a notice cannot do without, and
    per-rule overrides that would silently never be used (no such rule, or only one part)."""
    problems: list[str] = []
    for lang in LANGS:
        paths = sorted((directory / lang).glob("*.txt")) + sorted((directory / lang).glob(
            "*.html"))
        for stem in sorted({p.stem for p in paths} - {"notice"}):
            if rule_ids is not None and stem not in rule_ids:
                problems.append(f"{directory / lang / stem}.txt|html: override for unknown rule "
                                f"{stem!r}; it is never used (file names are rule ids)")
            for ext, other in (("txt", "html"), ("html", "txt")):
                if (directory / lang / f"{stem}.{ext}").exists() and not (
                        directory / lang / f"{stem}.{other}").exists():
                    problems.append(f"{directory / lang / stem}.{ext}: override without "
                                    f"{stem}.{other}; an override needs both parts, else the "
                                    "default notice is used")
        if not (directory / lang / "notice.txt").exists():
            problems.append(f"{directory / lang / 'notice.txt'}: missing (the default notice)")
        if not (directory / lang / "notice.html").exists():
            problems.append(f"{directory / lang / 'notice.html'}: missing (the default notice)")
        for p in paths:
            try:
                found = fields_of(p.read_text(encoding="utf-8"))
            except (ValueError, OSError) as exc:
                problems.append(f"{p}: cannot be read as a template: {exc}")
                continue
            unknown = sorted(found - PLACEHOLDERS)
            if unknown:
                problems.append(f"{p}: unknown placeholder(s) " + ", ".join(
                    "{" + u + "}" for u in unknown) + "; allowed: " + ", ".join(
                    sorted(PLACEHOLDERS)))
            missing = sorted(REQUIRED - found)
            if missing:
                problems.append(f"{p}: missing placeholder(s) " + ", ".join(
                    "{" + m + "}" for m in missing))
    return problems


def wants_notice(message: Message | None, mail_from: str) -> bool:
    """False for mail no one should answer: bounces, auto-submitted mail, notices (RFC 3834)."""
    if not mail_from or message is None:
        return False
    local = mail_from.partition("@")[0].lower()
    if local in ("mailer-daemon", "postmaster") or local.startswith("owner-"):
        return False
    auto = (message.header("Auto-Submitted") or ["no"])[0].strip().lower()
    if auto and not auto.startswith("no"):
        return False
    if message.header("X-SKOT-Notice"):
        return False
    precedence = (message.header("Precedence") or [""])[0].strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return False
    ctype = message.email.get_content_type()
    return ctype != "multipart/report"


@dataclass(frozen=True)
class NoticeRequest:
    """Everything a notice needs, captured when the verdict is final."""

    txid: str
    verdict: Verdict
    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    message_id: str
    received: datetime
    rules: tuple[RulePolicy, ...]


@dataclass(frozen=True)
class Notice:
    to: str
    kind: str  # "sender" or "supervisor"
    lang: str
    rendered: bytes
    txid: str
    rule_ids: tuple[str, ...]


def notice_rules(verdict: Verdict, policy: Policy) -> tuple[RulePolicy, ...]:
    """Enforced rules whose policy asks for a notice (monitor mode never notifies)."""
    out = []
    for fired in verdict.rules:
        rp = policy.rules.get(fired.id)
        if rp is not None and rp.notice and fired.mode == "enforce":
            out.append(rp)
    return tuple(out)


def render(req: NoticeRequest, lang: str, *, name: str, school: str, postmaster: str,
           templates: Path, rule: RulePolicy, suppressed: int = 0,
           intro: str = "") -> tuple[str, str, str]:
    """(subject, text, html) of one notice; values are HTML-escaped in the HTML part."""
    action = req.verdict.action
    rules_text = "\n".join(f"- {rp.text('title', lang)} (artikel {rp.article}, {rp.id}): "
                           f"{rp.text('reason', lang)}." if lang == "nl" else
                           f"- {rp.text('title', lang)} (article {rp.article}, {rp.id}): "
                           f"{rp.text('reason', lang)}." for rp in req.rules)
    no_subject = "(geen onderwerp)" if lang == "nl" else "(no subject)"
    values = {
        "name": name, "action_text": ACTION_TEXT[lang].get(action, action),
        "subject": req.subject or no_subject, "recipients": ", ".join(req.rcpt_tos),
        "time": req.received.strftime("%Y-%m-%d %H:%M UTC"), "rules_text": rules_text,
        "rules_html": rules_text,
        "advice": "\n".join(rp.text("advice", lang) for rp in req.rules
                            if rp.text("advice", lang)),
        "release_text": RELEASE_TEXT[lang].format(postmaster=postmaster)
        if action == "quarantine" else "",
        "postmaster": postmaster, "ref": req.txid,
        "summary_text": SUMMARY[lang].format(n=suppressed) if suppressed else "",
        "school": school or ("de school" if lang == "nl" else "the school"),
        "rule_id": rule.id, "article": rule.article, "rule_title": rule.text("title", lang),
    }
    txt_path, html_path = template_paths(templates, lang, rule.id)
    text = intro + txt_path.read_text(encoding="utf-8").format_map(values)
    escaped = {k: html.escape(v) for k, v in values.items()}
    for key in ("rules_html", "advice"):  # keep their line breaks in HTML
        escaped[key] = "<br>".join(html.escape(x) for x in values[key].splitlines())
    body_html = html_path.read_text(encoding="utf-8").format_map(escaped)
    if intro:
        body_html = re.sub(r"(<body[^>]*>)", lambda m: f"{m.group(1)}\n<p>"
                           f"{html.escape(intro.strip())}</p>", body_html, count=1)
    subject = SUBJECT[lang].format(action=ACTION_TEXT[lang].get(action, action).split(";")[0],
                                   subject=(req.subject or "")[:120])
    return subject, text, body_html


def build_mail(*, postmaster: str, to: str, subject: str, text: str, body_html: str,
               txid: str, in_reply_to: str, hostname: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = postmaster
    msg["To"] = to
    msg["Subject"] = " ".join(subject.split())
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid("notice", domain=hostname)
    if in_reply_to:
        msg["In-Reply-To"] = " ".join(in_reply_to.split())
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-SKOT-Notice"] = txid
    msg.set_content(text)
    msg.add_alternative(body_html, subtype="html")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


class RateLimiter:
    """At most ``per_hour`` notices per address per hour, across processes (SQLite)."""

    def __init__(self, path: Path, per_hour: int) -> None:
        self.per_hour = per_hour
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=10)
        self._db.execute("CREATE TABLE IF NOT EXISTS sent (address TEXT, ts REAL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS held (address TEXT PRIMARY KEY, n INT)")
        self._lock = threading.Lock()

    def admit(self, address: str, now: float | None = None) -> tuple[bool, int]:
        """(send it?, notices held back since the last one sent)."""
        now = time.time() if now is None else now
        key = address.lower()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM sent WHERE ts < ?", (now - 3600,))
                (count,) = self._db.execute("SELECT count(*) FROM sent WHERE address=?",
                                            (key,)).fetchone()
                if count >= self.per_hour:
                    self._db.execute("INSERT INTO held VALUES (?, 1) ON CONFLICT(address) "
                                     "DO UPDATE SET n = n + 1", (key,))
                    self._db.execute("COMMIT")
                    return False, 0
                row = self._db.execute("SELECT n FROM held WHERE address=?", (key,)).fetchone()
                self._db.execute("DELETE FROM held WHERE address=?", (key,))
                self._db.execute("INSERT INTO sent VALUES (?, ?)", (key, now))
                self._db.execute("COMMIT")
                return True, int(row[0]) if row else 0
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()


@dataclass
class Notifier:
    """Builds notices for a finished transaction and sends them in the background."""

    policy: Policy
    templates: Path
    school: str
    postmaster: str
    language: str
    hostname: str
    next_hop: str
    timeout: float
    limiter: RateLimiter
    directory: Any
    school_domains: Sequence[str]
    audit: Any = None              # AsyncAudit
    retries: int = 3
    retry_delay: float = 5.0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def plan(self, req: NoticeRequest,
             suppressed: list[tuple[str, str]] | None = None) -> list[Notice]:
        """Who gets which notice. Only school addresses: never backscatter to outsiders.

        Notices the rate limit holds back are added to ``suppressed`` as (address, kind):
        the audit says they were due, and the dashboard counts them."""
        if not req.rules:
            return []
        from milter.core.context import domain_in, domain_of

        to = req.mail_from.lower()
        for fired in req.verdict.rules:  # private-address mail: tell the staff member at work
            owner = fired.evidence.get("staff_member") if fired.evidence else None
            if isinstance(owner, str) and owner:
                to = owner
        if not domain_in(domain_of(to), self.school_domains):
            return []
        person = self.directory.lookup(to)
        lang = (person.language if person is not None and person.language else self.language)
        name = person.name if person is not None and person.name else to.partition("@")[0]
        send, held = self.limiter.admit(to)
        notices: list[Notice] = []
        if send:
            notices.append(self._notice(req, to, "sender", lang, name, held, ""))
        elif suppressed is not None:
            suppressed.append((to, "sender"))
        supervisor = person.supervisor if person is not None else ""
        if supervisor and any(rp.notice_supervisor for rp in req.rules):
            sup = self.directory.lookup(supervisor)
            slang = sup.language if sup is not None and sup.language else self.language
            sname = sup.name if sup is not None and sup.name else supervisor.partition("@")[0]
            intro = SUPERVISOR_INTRO[slang].format(sender=name)
            sup_send, sup_held = self.limiter.admit(f"supervisor:{supervisor}")
            if sup_send:
                notices.append(self._notice(req, supervisor, "supervisor", slang, sname,
                                            sup_held, intro))
            elif suppressed is not None:
                suppressed.append((supervisor, "supervisor"))
        return notices

    def _notice(self, req: NoticeRequest, to: str, kind: str, lang: str, name: str,
                held: int, intro: str) -> Notice:
        subject, text, body_html = render(req, lang, name=name, school=self.school,
                                          postmaster=self.postmaster, templates=self.templates,
                                          rule=req.rules[0], suppressed=held, intro=intro)
        raw = build_mail(postmaster=self.postmaster, to=to, subject=subject, text=text,
                         body_html=body_html, txid=req.txid, in_reply_to=req.message_id,
                         hostname=self.hostname)
        return Notice(to, kind, lang, raw, req.txid, tuple(rp.id for rp in req.rules))

    def schedule(self, req: NoticeRequest) -> None:
        """Plan and send in the background: never delays or changes the client's answer."""
        task = asyncio.get_running_loop().create_task(self._run(req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, req: NoticeRequest) -> None:
        suppressed: list[tuple[str, str]] = []
        try:
            notices = await asyncio.to_thread(self.plan, req, suppressed)
        except Exception as exc:  # noqa: BLE001 - a notice must never take the gateway down
            log.exception("tx=%s notice planning failed", req.txid)
            await self._audit("notice-failed", req.txid, (req.mail_from,),
                              f"notice could not be built: {type(exc).__name__}: {exc}",
                              {"kind": "sender", "rules": [rp.id for rp in req.rules]})
            return
        for to, kind in suppressed:
            await self._audit("notice-suppressed", req.txid, (to,), "",
                              {"kind": kind, "reason": "rate limit",
                               "rules": [rp.id for rp in req.rules]})
        for i, notice in enumerate(notices):
            try:
                await self.send(notice)
            except asyncio.CancelledError:  # the ones not yet tried are failed too
                for rest in notices[i + 1:]:
                    await self._audit("notice-failed", rest.txid, (rest.to,),
                                      "gateway stopped before the notice could be sent",
                                      {"kind": rest.kind, "lang": rest.lang,
                                       "rules": list(rest.rule_ids)})
                raise

    async def send(self, notice: Notice) -> bool:
        from milter.smtp.relay import NextHopError, send_message

        error = ""
        cancelled = False
        try:
            for attempt in range(1, self.retries + 1):
                try:
                    # From the postmaster, so a notice that cannot be delivered reaches IT.
                    reply = await send_message(self.next_hop, self.hostname, self.timeout,
                                               self.postmaster, [notice.to], notice.rendered)
                    if reply.ok:
                        error = ""
                        break
                    error = reply.line
                    if reply.code >= 500:
                        break
                except NextHopError as exc:
                    error = str(exc)
                if attempt < self.retries:
                    await asyncio.sleep(self.retry_delay * attempt)
        except asyncio.CancelledError:  # shutdown: say so in the audit trail, then stop
            error, cancelled = "gateway stopped before the notice could be sent", True
        event = "notice-failed" if error else "notice-sent"
        if error:
            log.warning("tx=%s notice to %s failed: %s", notice.txid, notice.to, error)
        await self._audit(event, notice.txid, (notice.to,), error,
                          {"kind": notice.kind, "lang": notice.lang,
                           "rules": list(notice.rule_ids)})
        if cancelled:
            raise asyncio.CancelledError
        return not error

    async def _audit(self, event: str, txid: str, to: tuple[str, ...], error: str,
                     evidence: dict[str, Any]) -> None:
        from milter.audit.store import AuditEvent, AuditUnavailable

        if self.audit is None:
            return
        try:
            await self.audit.append(AuditEvent(
                event=event, txid=txid, recipients=to, sender=self.postmaster, action=event,
                reply=error, evidence=evidence))
        except AuditUnavailable as exc:
            log.error("tx=%s notice audit failed: %s", txid, exc)

    async def drain(self, timeout: float = 10.0) -> None:
        """Let queued notices finish; those still retrying after ``timeout`` are cancelled
        and audited as ``notice-failed`` (a stop must not hang on an unreachable next hop)."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def request_for(txid: str, verdict: Verdict, policy: Policy, message: Message | None,
                mail_from: str, rcpt_tos: Sequence[str],
                summary: Mapping[str, Any]) -> NoticeRequest | None:
    """A notice request if this transaction deserves one, else None."""
    rules = notice_rules(verdict, policy)
    if not rules or not wants_notice(message, mail_from):
        return None
    subject = message.subject if message is not None else str(summary.get("subject", ""))
    return NoticeRequest(txid=txid, verdict=verdict, mail_from=mail_from,
                         rcpt_tos=tuple(rcpt_tos), subject=subject,
                         message_id=message.message_id if message is not None else "",
                         received=datetime.now(UTC), rules=rules)
