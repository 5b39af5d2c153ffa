"""One transaction, from MAIL to outcome, the same for every front.

``Gateway.begin`` pins the runtime (a reload never changes the policy halfway through a
message) and the txid; ``Transaction.decide`` evaluates, counts, logs and, for a message that
goes no further (reject, tempfail, quarantine), keeps it, records the decision durably and
queues notices; a message to deliver then ends in ``outcome`` (SMTP front: after the next hop
answered the final dot, its ``intent`` made durable before that dot) or ``handed_over``
(milter front: before the MTA queues it). This module owns the order of durable writes: no
client hears an answer that is not on record. Fronts only translate their protocol into these
calls and the replies back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from milter import metrics, selfrelease, warning
from milter import quarantine as quarantine_mod
from milter.audit.store import AuditEvent, AuditRecord, AuditUnavailable
from milter.audit.writer import AuditWriter
from milter.config import DEFAULT_MESSAGE_MEMORY
from milter.core.context import Envelope
from milter.core.engine import RuleCrashed
from milter.core.message import Message, Unparseable, normalize_line_endings, parse
from milter.core.verdict import ascii_line, reply_line
from milter.dkimsign import Signer
from milter.nexthop import NextHopError, Reply
from milter.notices import Notifier, request_for
from milter.quarantine import Quarantine, QuarantineError
from milter.runtime import Authenticator, Evaluation, Runtime
from milter.spool import MemoryBudget, Spooled

log = logging.getLogger("skot-milter")

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

# What a client hears when we, not the policy, cannot go on. The same texts on every front.
POLICY_FAILURE = "451 4.3.0 Temporary policy failure, try again later ref={ref}"
AUDIT_DOWN = "451 4.3.0 Audit store unavailable, try again later ref={ref}"
STORAGE_FAILURE = "451 4.3.0 Temporary storage failure, try again later ref={ref}"
LOCAL_PROBLEM = "451 4.3.0 Temporary local problem, try again later ref={ref}"
NEXT_HOP_DOWN = "451 4.4.1 Next hop unavailable, try again later ref={ref}"
NEXT_HOP_FAILED = "4.4.2 Next hop failed, try again later ref={ref}"
# Over the size limit: ``milter.core.verdict.too_big(limit)``, with the limit, Dutch first.
DELIVERED = "250 2.0.0 Ok: queued ref={ref}"

# Threads for inspection (per process), and the seconds past ``[inspection] time_budget``
# after which we stop waiting for one that did not stop itself.
INSPECTION_THREADS = 8
BACKSTOP = 5.0


def new_txid() -> str:
    """A short, sortable transaction id: it appears in logs, the audit and reply texts."""
    t = int(time.time() * 1000)
    stamp = "".join(_ALPHABET[(t >> s) & 31] for s in range(45, -5, -5))
    r = secrets.randbits(30)  # one system call, not six
    return stamp + "".join(_ALPHABET[(r >> s) & 31] for s in range(25, -5, -5))


def client_line(reply: Reply) -> str:
    """The next hop's reply as ours to the client. Its 421 means *its* session is closing,
    not ours: the client hears 451 with the next hop's text, and the connection stays."""
    if reply.code == 421:
        return Reply(451, reply.text or "4.4.2 Next hop closed the connection").line
    return reply.line


@dataclass(frozen=True)
class Decision:
    """What ``decide`` made of a message. ``deliver``: it goes on (accept or tag), and the
    front relays it or hands it to the MTA; else ``reply`` is the final answer, on record."""

    evaluation: Evaluation | None
    deliver: bool
    reply: str = ""
    quarantine_id: str = ""
    consumed: bool = False  # a 250 for a message that goes nowhere (a release request)


@dataclass
class Gateway:
    """What every transaction of a running gateway shares. ``runtime`` is swapped on reload;
    a transaction keeps the one it began with."""

    runtime: Runtime
    audit: AuditWriter
    quarantine: Quarantine
    notifier: Notifier | None = None
    authenticator: Authenticator | None = None
    signer: Signer | None = None
    # Spooled (large) messages in processing, both fronts together, this process.
    memory: MemoryBudget = field(default_factory=lambda: MemoryBudget(DEFAULT_MESSAGE_MEMORY))
    # Inspection runs here, never on the event loop: a heavy message must not make every
    # other SMTP and milter client wait (issue 13). Its own pool, so that DNS look-ups and
    # file writes on asyncio's default pool do not queue behind inspections.
    inspectors: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        max_workers=INSPECTION_THREADS, thread_name_prefix="inspect"))

    def begin(self, front: str, *, sender: str, client: str, helo: str = "",
              auth_user: str = "", extra: dict[str, Any] | None = None) -> Transaction:
        """A transaction at MAIL: the current runtime and a new txid, kept to the end."""
        return Transaction(self, self.runtime, front, new_txid(), sender, client, helo,
                           auth_user, dict(extra or {}))

    @contextlib.asynccontextmanager
    async def message_bytes(self, source: bytes | Spooled) -> AsyncIterator[bytes]:
        """The message's bytes for as long as the transaction needs them. A spooled message
        is read back only when the process has memory for it (see ``milter.spool``)."""
        if isinstance(source, bytes | bytearray):
            yield bytes(source)
            return
        async with self.memory.reserve_message(source.size):
            yield source.read()

    async def evaluate(self, envelope: Envelope, content: bytes, runtime: Runtime) -> Evaluation:
        """Evaluate off the event loop (inbound mail is authenticated first: DNS look-ups).

        The budget is enforced twice: inside, the readers and detectors stop at
        ``time_budget`` (``Runtime.evaluate`` makes that ``A1.uninspectable``); outside, a
        thread that still has not answered ``BACKSTOP`` seconds later (a C routine that
        does not look at the clock) is left to finish on its own and the message is
        ``A1.uninspectable`` all the same. Either way the client is answered in time."""
        started = time.perf_counter()
        auth = self.authenticator if self.authenticator is not None and \
            runtime.context(envelope).direction == "inbound" else None
        budget = runtime.config.inspection.time_budget + BACKSTOP
        if auth is not None:
            budget += runtime.config.dns.timeout * 4  # SPF, DKIM, DMARC and a retry
        loop = asyncio.get_running_loop()
        # One future and one timer: run_in_executor, shield and wait_for would chain four
        # futures and their callbacks for the same hand-over, per message.
        done: asyncio.Future[Evaluation] = loop.create_future()
        work = self.inspectors.submit(runtime.evaluate, envelope, content, None, auth)
        work.add_done_callback(lambda w: _hand_back(loop, w, done))
        backstop = loop.call_later(budget, _give_up, done)
        try:
            return await done
        except _Backstop:
            log.error("tx=%s inspection did not stop within %.0fs; held as A1.uninspectable",
                      envelope.txid, budget)
            return runtime.out_of_time(envelope, content)
        finally:
            backstop.cancel()
            metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)

    def added_fields(self, evaluation: Evaluation, authserv_id: str,
                     delivered: bytes | None = None) -> list[tuple[str, str]]:
        """Header fields we add, as (name, value): results, policy tags, then a DKIM
        signature over them and the message as delivered. The SMTP front writes them before
        the message; the milter front asks the MTA to add them."""
        fields = policy_fields(evaluation, authserv_id)
        message = evaluation.message
        if self.signer is not None and message is not None and \
                evaluation.verdict.direction == "outbound":
            authors = [a.addr_spec for a in message.authors if a.valid]
            if len(authors) == 1:
                head = render_fields(fields)
                body = evaluation.raw if delivered is None else delivered
                sig = self.signer.signature(head + body, authors[0])
                fields = [split_field(line) for line in unfold(sig)] + fields
        return fields

    def delivered(self, tx: Transaction, banner: bool = True) -> bytes:
        """The message as received, or with the warning a tagging rule asks for (a subject
        prefix or banner, ``milter.warning``): the same bytes whichever front delivers it."""
        evaluation = tx.evaluation
        assert evaluation is not None
        return warning.delivered(evaluation.raw, evaluation.message, evaluation.verdict,
                                 tx.runtime.policy, banner)


class _Backstop(Exception):
    """An inspection thread did not answer within the budget and the backstop."""


def _give_up(done: asyncio.Future[Any]) -> None:
    if not done.done():
        done.set_exception(_Backstop())


def _hand_back(loop: asyncio.AbstractEventLoop, work: Future[Any],
               done: asyncio.Future[Any]) -> None:
    """The inspection thread's outcome to the waiting coroutine (inspection thread)."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        loop.call_soon_threadsafe(_settle, work, done)


def _settle(work: Future[Any], done: asyncio.Future[Any]) -> None:
    if done.done():  # given up (backstop) or its waiter was cancelled
        return
    if work.cancelled():  # the pool shut down before it ran
        done.cancel()
        return
    exc = work.exception()
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(work.result())


@dataclass
class Transaction:
    """One message's way through the gateway; see the module docstring for the order."""

    gateway: Gateway
    runtime: Runtime
    front: str
    txid: str
    sender: str
    client: str
    helo: str = ""
    auth_user: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # evidence on every record (milter)
    recipients: list[str] = field(default_factory=list)
    evaluation: Evaluation | None = None
    release_address: str = ""  # offered in the notice when the sender may release it
    release_link: str = ""     # and the web view's page for it, when the site has one

    def envelope(self) -> Envelope:
        return Envelope(mail_from=self.sender, rcpt_tos=tuple(self.recipients),
                        client_ip=self.client, helo=self.helo, auth_user=self.auth_user,
                        txid=self.txid)

    def reply(self, template: str) -> str:
        return template.format(ref=self.txid)

    # -- the decision ----------------------------------------------------------------------

    def release_token(self, recipient: str) -> str | None:
        """Not None when ``recipient`` is a self-release address ("" when malformed)."""
        return selfrelease.token_of(self.runtime.policy.self_release, recipient,
                                    self.runtime.config.school_domains)

    async def decide(self, content: bytes) -> Decision:
        """Evaluate; a message that goes no further is kept (quarantine), recorded and
        notified here, and its reply is final. A rule that crashes is a 451, on record."""
        if self.recipients and all(self.release_token(r) is not None
                                   for r in self.recipients):
            return await self._self_release(content)
        try:
            with self.gateway.audit.expecting():  # its record follows: a commit may wait
                evaluation = await self.gateway.evaluate(self.envelope(), content,
                                                         self.runtime)
        except RuleCrashed as exc:
            log.error("tx=%s policy evaluation failed: %s", self.txid, exc)
            answer = self.reply(POLICY_FAILURE)
            await self.record_best_effort("tempfailed", answer, {"error": str(exc)})
            return Decision(None, False, answer)
        self.evaluation = evaluation
        verdict = evaluation.verdict
        metrics.record_verdict(self.front, verdict.direction, verdict.action,
                               [(r.id, r.mode) for r in verdict.rules])
        log.info("tx=%s %s from=<%s> rcpts=%d action=%s rules=%s", self.txid, self.front,
                 self.sender, len(self.recipients), verdict.action,
                 ",".join(r.id for r in verdict.rules) or "-")
        if verdict.action in ("accept", "tag"):
            return Decision(evaluation, True)
        extra: dict[str, Any] = {}
        qid = ""
        if verdict.action == "quarantine":
            envelope: dict[str, Any] = {"mail_from": self.sender,
                                        "rcpt_tos": list(self.recipients),
                                        "client_ip": self.client, "auth_user": self.auth_user}
            policy = self.runtime.policy.self_release
            domains = self.runtime.config.school_domains
            if selfrelease.eligible(policy, verdict) and self.sender and \
                    self.sender.rpartition("@")[2].lower() in domains:
                token = selfrelease.new_token()
                envelope["release_token_sha256"] = selfrelease.token_hash(token)
                self.release_address = selfrelease.address(policy, domains[0], token)
                self.release_link = selfrelease.link(self.runtime.config.web.public_url,
                                                     token)
            try:
                qid = await asyncio.to_thread(
                    self.gateway.quarantine.put, self.txid, evaluation.raw, envelope,
                    verdict.to_json())
            except QuarantineError as exc:
                log.error("tx=%s quarantine failed: %s", self.txid, exc)
                return Decision(evaluation, False, self.reply(STORAGE_FAILURE))
            metrics.QUARANTINE_MESSAGES.inc()
            extra["quarantine_id"] = qid
        event = {"reject": "rejected", "quarantine": "quarantined"}.get(verdict.action,
                                                                         "tempfailed")
        try:
            await self.record(event, verdict.smtp_reply, extra)
        except AuditUnavailable as exc:
            log.error("tx=%s audit unavailable: %s", self.txid, exc)
            if qid:  # the client retries: a held copy kept now would be held twice
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.gateway.quarantine.delete, qid)
            return Decision(evaluation, False, self.reply(AUDIT_DOWN))
        self.notify()
        return Decision(evaluation, False, verdict.smtp_reply, qid)

    # -- a message that goes on --------------------------------------------------------------

    def intent(self) -> asyncio.Task[AuditRecord]:
        """Start the durable intent record (SMTP front: before the final dot goes out). The
        task is shielded by the caller; it completes even if the client vanishes."""
        return asyncio.get_running_loop().create_task(
            self.gateway.audit.append(self.event("intent")))

    async def outcome(self, result: Reply | NextHopError, after_dot: bool = False) -> str:
        """The next hop answered the final dot (or failed): record it and answer the client.

        A failure ``after_dot`` (no answer in time, connection lost) is recorded as
        ``unknown``, not ``tempfailed``: the next hop may have delivered the message, and
        the client, told to retry, may send it again (``audit verify`` warns of each).

        After the next hop's 250 the client hears 250 even when the store refuses the
        record (a 4xx would only cause a duplicate, HOSTILE-INPUTS 35); the writer keeps it
        and writes it once the store takes writes again."""
        if isinstance(result, NextHopError):
            metrics.NEXT_HOP_ERRORS.labels("data").inc()
            log.warning("tx=%s next hop failed at DATA: %s", self.txid, result)
            reply = Reply(451, self.reply(NEXT_HOP_FAILED))
        else:
            reply = result
        if reply.ok:
            event, answer = "delivered", self.reply(DELIVERED)
        elif isinstance(result, NextHopError) and after_dot:
            event, answer = "unknown", reply.line
        elif 400 <= reply.code < 500:
            event, answer = "tempfailed", client_line(reply)
        else:
            event, answer = "rejected", reply.line
        try:
            await self.record(event, answer, {"next_hop_reply": reply.line})
        except AuditUnavailable as exc:
            log.error("tx=%s outcome record failed after relay: %s", self.txid, exc)
        if reply.ok:
            self.notify()
        return answer

    async def handed_over(self) -> str:
        """Milter front: the MTA queues the message after our answer, so its record is
        durable before that answer. Returns "" to go on, or the 451 to give instead."""
        try:
            await self.record("delivered", "")
        except AuditUnavailable as exc:
            log.error("tx=%s audit unavailable: %s", self.txid, exc)
            return self.reply(AUDIT_DOWN)
        self.notify()
        return ""

    async def refused(self, reply: str, why: str, evidence: dict[str, Any]) -> None:
        """The front refused the message before any policy ran (too big, a line too long):
        the refusal is on record with its reason and the size seen."""
        limit = self.runtime.config.gateway.max_message_size
        log.info("tx=%s %s refused: %s", self.txid, self.front, why)
        await self.record_best_effort("rejected", reply, {"refused": why, **evidence,
                                                          **({"limit": limit} if why ==
                                                             "too-big" else {})})

    async def abandoned(self, why: str) -> None:
        """The client vanished before the final dot: nothing was relayed; the intent gets
        its outcome."""
        await self.record_best_effort("tempfailed", why)

    async def next_hop_failed(self, answer: str, stage: str, failure: Exception | str,
                              next_hop: str) -> None:
        """The audit shows a next hop that failed before any policy ran (HOSTILE-INPUTS 33):
        which transaction, at which command, what the client was told."""
        metrics.NEXT_HOP_ERRORS.labels(stage.lower()).inc()
        await self.record_best_effort("tempfailed", answer, {
            "next_hop": next_hop, "stage": stage, "next_hop_error": str(failure)})

    # -- records and notices -------------------------------------------------------------------

    def event(self, event: str, reply: str = "",
              extra: dict[str, Any] | None = None) -> AuditEvent:
        """An audit event for this transaction: who, which rules, what was done, evidence."""
        evaluation = self.evaluation
        evidence: dict[str, Any] = {}
        rules: tuple[dict[str, Any], ...] = ()
        action, direction, message_id, subject = "", "", "", ""
        if evaluation is not None:
            verdict = evaluation.verdict
            action, direction = verdict.action, verdict.direction
            rules = tuple({"id": r.id, "article": r.article, "action": r.action,
                           "mode": r.mode, "reason": r.reason, "evidence": r.evidence}
                          for r in verdict.rules)
            evidence = {k: v for k, v in evaluation.summary.items()
                        if k not in ("message_id", "subject")}
            message_id = str(evaluation.summary.get("message_id", ""))
            subject = str(evaluation.summary.get("subject", ""))
        evidence.update(self.extra)
        if extra:
            evidence.update(extra)
        return AuditEvent(event=event, txid=self.txid, message_id=message_id,
                          client=self.client, direction=direction, sender=self.sender,
                          recipients=tuple(self.recipients), auth_user=self.auth_user,
                          rules=rules, action=action, reply=reply, evidence=evidence,
                          subject=subject)

    async def record(self, event: str, reply: str = "",
                     extra: dict[str, Any] | None = None) -> AuditRecord:
        """Append durably; raises AuditUnavailable."""
        return await self.gateway.audit.append(self.event(event, reply, extra))

    async def record_best_effort(self, event: str, reply: str,
                                 extra: dict[str, Any] | None = None) -> None:
        try:
            await self.record(event, reply, extra)
        except AuditUnavailable as exc:
            log.error("tx=%s audit unavailable: %s", self.txid, exc)

    def notify(self) -> None:
        """Queue notices for a decision that was carried out (after the client's answer)."""
        notifier, evaluation = self.gateway.notifier, self.evaluation
        if notifier is None or evaluation is None or evaluation.verdict.action == "tempfail":
            return
        req = request_for(self.txid, evaluation.verdict, self.runtime.policy,
                          evaluation.message, self.sender, self.recipients, evaluation.summary)
        if req is not None:
            notifier.schedule(replace(req, release_address=self.release_address,
                                      release_link=self.release_link))

    # -- the sender releases a held message, with a reason ------------------------------------

    async def _self_release(self, content: bytes) -> Decision:
        """A reply to ``vrijgeven+TOKEN@school``: release once, for the original sender only,
        with a reason; anything else is refused. Either way it is on record."""
        policy = self.runtime.policy.self_release
        tokens = {self.release_token(r) for r in self.recipients}
        try:
            message: Message | None = parse(normalize_line_endings(content))
        except Unparseable:
            message = None
        why, entry = "", None
        if len(tokens) != 1 or not next(iter(tokens)):
            why = "unknown release address"
        elif self.runtime.context(self.envelope()).direction != "outbound":
            why = "not from the school network or signed in"
        else:
            entry = await asyncio.to_thread(quarantine_mod.find_by_token,
                                            self.gateway.quarantine,
                                            selfrelease.token_hash(next(iter(tokens)) or ""))
            authors = [a.addr_spec.lower() for a in message.authors] if message else []
            original = str(entry.meta.get("envelope", {}).get("mail_from", "")).lower() \
                if entry is not None else ""
            if entry is None:
                why = "unknown or already released"
            elif self.sender.lower() != original or authors != [original]:
                why = "only the original sender may release it"
            elif not selfrelease.reason_of(message):
                why = "no reason given"
            elif await self._released_today(original) >= policy.per_day:
                why = f"daily limit of {policy.per_day} reached"
        reason = selfrelease.reason_of(message)
        if why or entry is None:
            answer = reply_line("550 5.7.1", f"Vrijgeven geweigerd / release refused: {why} "
                                f"ref={self.txid}")
            await self.record_best_effort("self-release-refused", answer, {"why": why})
            return Decision(None, False, answer)
        # Exactly once comes from the quarantine's claim (one atomic step, on every node):
        # a reply that loses the race hears that it was released already.
        try:  # for the supervisor's copy; gone already means someone else has it
            subject = await asyncio.to_thread(lambda: quarantine_mod.subject_of(entry.raw))
        except OSError:
            subject = ""
        try:
            line = await quarantine_mod.release_async(
                self.runtime.config, self.gateway.quarantine, entry,
                selfrelease.actor(self.sender),
                {"reason": reason, "self_release": True})
        except quarantine_mod.AlreadyTaken:
            answer = reply_line("550 5.7.1", "Vrijgeven geweigerd / release refused: "
                                f"already released ref={self.txid}")
            await self.record_best_effort("self-release-refused", answer,
                                          {"why": "already released"})
            return Decision(None, False, answer)
        except quarantine_mod.ActionFailed as exc:
            log.warning("tx=%s self-release of %s failed: %s", self.txid, entry.id, exc)
            return Decision(None, False, self.reply(NEXT_HOP_DOWN))
        answer = reply_line("250 2.0.0", f"Vrijgegeven / released ref={self.txid}")
        await self.record_best_effort("self-release", answer, {
            "quarantine_id": entry.id, "released_txid": entry.meta.get("txid", ""),
            "reason": reason, "next_hop_reply": line})
        notifier = self.gateway.notifier
        if notifier is not None:
            notifier.schedule_release_copy(entry.meta, self.sender, reason, subject)
        return Decision(None, False, answer, consumed=True)

    async def _released_today(self, sender: str) -> int:
        return await asyncio.to_thread(selfrelease.released_today, self.gateway.audit.store,
                                       sender)


def policy_fields(evaluation: Evaluation, authserv_id: str = "") -> list[tuple[str, str]]:
    """``Authentication-Results:`` and ``X-SKOT-Policy:`` fields; no CR, LF or NUL in values."""
    fields: list[tuple[str, str]] = []
    if evaluation.auth is not None and authserv_id:
        fields.append(("Authentication-Results",
                       ascii_line(evaluation.auth.header_value(authserv_id))))
    for r in evaluation.verdict.rules:
        if r.mode != "enforce" or r.action != "tag":
            continue
        fields.append(("X-SKOT-Policy", ascii_line(f"{r.id}; article={r.article}; "
                                                   f"action={r.action}; "
                                                   f"ref={evaluation.verdict.ref}")))
    return fields


def render_fields(fields: Sequence[tuple[str, str]]) -> bytes:
    """Header fields as message bytes (a folded value keeps its CRLF + whitespace)."""
    return b"".join(f"{name}: {value}\r\n".encode("ascii") for name, value in fields)


def unfold(head: bytes) -> list[bytes]:
    """Header lines grouped into fields (continuation lines stay with their field)."""
    lines: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b"\r\n" + line
        elif line:
            lines.append(line)
    return lines


def split_field(line: bytes) -> tuple[str, str]:
    name, _, value = line.partition(b":")
    return name.decode("ascii").strip(), value.strip().decode("ascii")


__all__ = ["Decision", "Gateway", "Transaction", "client_line", "new_txid", "policy_fields"]
