"""A notice rendered: what was stopped and why, in the staff member's words (names and counts
from the audit evidence, never a matched value), and who gets one (no backscatter, RFC 3834)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from milter.core.message import Message
from milter.core.verdict import FiredRule, Verdict
from milter.notices.texts import SUMMARY_ITEMS, Style, Texts
from milter.policy import Policy, RulePolicy

# -- what was found, in words ---------------------------------------------------------------------

def _why(texts: Texts, reason: str) -> str:
    table: Mapping[str, str] = texts.data["findings"]["why"]
    low = reason.lower()
    for start, words in table.items():
        if start and (low.startswith(start.lower()) or start.lower() in low):
            return str(words)
    return str(table.get("", reason))


def _item_name(texts: Texts, item: Mapping[str, Any]) -> str:
    return texts.quote(str(item.get("name") or "?"))


def _item_findings(texts: Texts, item: Mapping[str, Any]) -> list[str]:
    what: list[str] = []
    for key in ("pupil_rows", "bsn", "iban"):
        n = item.get(key)
        if isinstance(n, int) and n > 0:
            what.append(texts.count("findings", key, n))
    for key in ("labels", "markings"):
        words = [texts.quote(str(w)) for w in item.get(key) or []]
        if words:
            what.append(texts.count("findings", key, len(words), words=texts.join(words)))
    return what


def _limited(texts: Texts, parts: list[str], limit: int = 5) -> list[str]:
    if len(parts) <= limit:
        return parts
    return parts[:limit] + [texts.get("findings", "more", n=len(parts) - limit)]


def describe(texts: Texts, rp: RulePolicy, fired: FiredRule | None, mail_from: str,
             sender_name: str = "") -> str:
    """What the rule found, from its evidence: file names, counts, labels; never a value.
    ``sender_name``: the finding is told to someone else (the sender's supervisor)."""
    ev: Mapping[str, Any] = fired.evidence if fired is not None else {}
    items = [i for i in ev.get("items", []) or [] if isinstance(i, Mapping)]
    parts: list[str] = []
    if rp.id == "A1.uninspectable" or (items and all("reason" in i for i in items)):
        parts = [texts.get("findings", "message", why=_why(texts, str(i.get("reason", ""))))
                 if str(i.get("name", "")).startswith("(") else
                 texts.get("findings", "uninspectable", name=_item_name(texts, i),
                           why=_why(texts, str(i.get("reason", "")))) for i in items]
    elif items and all(i.get("type") in ("image", "video", "audio") and
                       not _item_findings(texts, i) for i in items):
        kinds = texts.data["findings"]["media_kinds"]
        parts = [texts.get("findings", "media", name=_item_name(texts, i),
                           kind=kinds.get(i.get("type"), i.get("type"))) for i in items]
    elif items or ev.get("subject_markings"):
        for i in items:
            what = texts.join(_item_findings(texts, i))
            if not what:
                continue
            if str(i.get("name", "")).startswith("("):  # the message text itself
                parts.append(texts.get("findings", "body", what=what))
            else:
                key = "archive_member" if "/" in str(i.get("name", "")) else "attachment"
                parts.append(texts.get("findings", key, name=_item_name(texts, i), what=what))
        marks = [texts.quote(str(w)) for w in ev.get("subject_markings") or []]
        if marks:
            parts.append(texts.get("findings", "subject", what=texts.count(
                "findings", "markings", len(marks), words=texts.join(marks))))
    elif ev.get("forwarding_mailbox") or ev.get("signals") and "original_author" in ev:
        parts = [texts.get("findings", "forward", mailbox=ev.get("forwarding_mailbox") or "?",
                           recipients=texts.join([str(r) for r in ev.get(
                               "external_recipients", [])]))]
    elif ev.get("original_authors"):
        parts = [texts.get("findings", "manual_forward",
                           authors=texts.join([str(a) for a in ev["original_authors"]]),
                           recipients=texts.join([str(r) for r in ev.get(
                               "external_recipients", [])]))]
    elif ev.get("staff_member"):
        parts = [texts.get("findings", "private_address_supervisor", sender=mail_from,
                           name=sender_name) if sender_name else
                 texts.get("findings", "private_address", sender=mail_from)]
    parts = _limited(texts, parts)
    return "; ".join(parts) if parts else texts.rule(rp, "finding")


# -- the request and its rendering --------------------------------------------------------------

@dataclass(frozen=True)
class NoticeRequest:
    """Everything a notice needs, captured when the verdict is final. ``rules``: every
    enforced rule that fired (all are named), those that ask for a notice first."""

    txid: str
    verdict: Verdict
    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    message_id: str
    received: datetime
    rules: tuple[RulePolicy, ...]
    release_address: str = ""  # the sender may release it by replying here, with a reason
    release_link: str = ""     # or on this page of the web view, signed in (web.public_url)
    intro: str = ""            # a first paragraph (the supervisor's copy of a self-release)

    def fired(self, rule_id: str) -> FiredRule | None:
        return next((r for r in self.verdict.rules if r.id == rule_id), None)

    def forwarded_by(self) -> str:
        """The school mailbox whose forwarding rule sent this message out, if it was one."""
        for r in self.verdict.rules:
            box = r.evidence.get("forwarding_mailbox") if r.evidence else None
            if r.mode == "enforce" and isinstance(box, str) and box:
                return box.lower()
        return ""


_LINK = "\x00link\x00"  # where the release link goes, until it is written as text or HTML


def _fill(template: str, values: Mapping[str, str], *, is_html: bool,
          raw: Collection[str] = ()) -> str:
    if is_html:
        values = {k: (v if k in raw else html.escape(v)) for k, v in values.items()}
    out = template.format_map(values)
    if not is_html:  # an empty optional paragraph leaves no gap
        out = re.sub(r"[ \t]+\n", "\n", out)
        out = re.sub(r"\n[ \t]+", "\n", out)
        out = re.sub(r"\n{3,}", "\n\n", out).lstrip("\n")
    else:
        out = re.sub(r"<p>\s*</p>\n?", "", out)
    return out


def _paragraphs_html(text: str) -> str:
    return "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n") if p.strip())


def render(req: NoticeRequest, style: Style, *, lang: str, name: str, kind: str = "sender",
           sender_name: str = "", supervisor: str = "", also_held: int = 0,
           rule: RulePolicy | None = None) -> tuple[str, str, str]:
    """(subject, text, html) of one notice. ``kind``: "sender" (your message), "forward"
    (a message in your mailbox was forwarded) or "supervisor" (a message of ``sender_name``).
    ``supervisor``: the name of the reader's supervisor, used in the advice to ask them."""
    texts = style.texts(lang)
    zone = style.zone
    action = req.verdict.action if req.verdict.action in ("reject", "quarantine") else "tag"
    internal = bool(req.rcpt_tos) and all(style.internal(r) for r in req.rcpt_tos)
    rule = rule or req.rules[0]
    no_subject = texts.get("words", "no_subject")
    recipients = ", ".join(req.rcpt_tos)
    lines, items_html = [], []
    for rp in req.rules:
        title = texts.rule(rp, "title", internal)
        finding = describe(texts, rp, req.fired(rp.id), req.mail_from,
                           sender_name if kind == "supervisor" else "")
        line = f"{title} ({texts.articles(rp)}): {finding}."
        lines.append(f"- {line}")
        items_html.append(f"<li><strong>{html.escape(title)}</strong> "
                          f"({html.escape(texts.articles(rp))}): {html.escape(finding)}.</li>")
    advice = "\n".join(dict.fromkeys(a for rp in req.rules
                                     if (a := texts.rule(rp, "advice", internal))))
    if kind == "supervisor" and advice:  # advice to the sender, quoted: "je" is not the reader
        advice = texts.get("sentences", "advice_quoted", sender=sender_name,
                           advice=texts.quote(advice.replace("\n", " ")))
    if kind == "supervisor":
        action_text = texts.get("action", f"supervisor_{action}", sender=sender_name)
        supervisor_text = texts.get("sentences", "doubt_as_supervisor", sender=sender_name)
    else:
        action_text = texts.get("action", "forward" if kind == "forward" else action,
                                recipients=recipients)
        supervisor_text = (texts.get("sentences", "doubt_supervisor", supervisor=supervisor)
                           if supervisor else texts.get("sentences", "doubt"))
    delete_on = req.received + timedelta(days=style.retention_days)
    delete_date = texts.when(delete_on, zone, key="date")
    held = ("held_supervisor" if kind == "supervisor" else
            "held_self" if req.release_address else "held")
    link = req.release_link if held == "held_self" else ""
    if link and "held_self_link" in texts.data.get("sentences", {}):
        held = "held_self_link"  # (a site's own texts without the sentence: reply only)
    sentence = texts.get("sentences", held, days=style.retention_days,
                         postmaster=style.postmaster, delete_date=delete_date,
                         address=req.release_address, link=_LINK) \
        if action == "quarantine" else ""
    # the link is a real link in the HTML part; the text part shows the address as it is
    release_html = html.escape(sentence).replace(
        _LINK, f'<a href="{html.escape(link)}">{html.escape(link)}</a>')
    release_text = sentence.replace(_LINK, link)
    if req.intro:  # the sender's own words (a reason): text, never markup
        release_text = req.intro + ("\n\n" + release_text if release_text else "")
        release_html = html.escape(req.intro) + ("\n\n" + release_html if release_html
                                                 else "")
    values = {
        "name": name, "action_text": action_text, "subject": req.subject or no_subject,
        "recipients": recipients, "time": texts.when(req.received, zone),
        "rules_text": "\n".join(lines), "rules_html": "<ul>" + "".join(items_html) + "</ul>",
        "advice": advice, "release_text": release_text, "postmaster": style.postmaster,
        "ref": req.txid,
        "summary_text": texts.count("sentences", "also_held", also_held) if also_held else "",
        "school": style.school or texts.get("words", "school"), "rule_id": rule.id,
        "article": texts.articles(rule), "rule_title": texts.rule(rule, "title", internal),
        "supervisor_text": supervisor_text, "delete_date": delete_date,
        "retention_days": str(style.retention_days),
        # the teacher is told that a record was kept, and for how long (AVG transparency)
        "record_text": (texts.get("sentences", "record", days=style.record_days)
                        if style.record_days else texts.get("sentences", "record_forever")),
        "advice_heading": texts.get("words", "advice_heading_supervisor" if kind == "supervisor"
                                    else "advice_heading", sender=sender_name),
    }
    txt_t, html_t = texts.template("notice", rule.id)
    text = _fill(txt_t, values, is_html=False)
    html_values = dict(values, advice=_paragraphs_html(advice), release_text=release_html)
    body_html = _fill(html_t, html_values, is_html=True,
                      raw=("rules_html", "advice", "release_text"))
    key = "supervisor" if kind == "supervisor" else "forward" if kind == "forward" else action
    subject = texts.get("subject", key, subject=(req.subject or no_subject)[:120],
                        sender=sender_name)
    return f"{texts.get('words', 'subject_prefix')} {subject}", text, body_html


@dataclass(frozen=True)
class HeldItem:
    """A notice the rate limit held back, as the summary lists it (kept in the limiter's
    database until the summary is sent)."""

    txid: str
    received: float
    subject: str
    action: str
    titles: tuple[str, ...]   # rule ids; the summary words them in the reader's language
    internal: bool = False    # to colleagues only: the titles never say "outside"

    def to_json(self) -> str:
        return json.dumps({"txid": self.txid, "received": self.received,
                           "subject": self.subject, "action": self.action,
                           "rules": list(self.titles), "internal": self.internal})

    @classmethod
    def from_json(cls, data: str) -> HeldItem:
        d = json.loads(data)
        return cls(str(d["txid"]), float(d["received"]), str(d["subject"]), str(d["action"]),
                   tuple(d["rules"]), bool(d.get("internal", False)))


def render_summary(items: Sequence[HeldItem], style: Style, policy: Policy | None, *,
                   lang: str, name: str, supervisor: str = "",
                   as_supervisor: bool = False) -> tuple[str, str, str]:
    """(subject, text, html) of the summary sent when the hour of held-back notices is over."""
    texts = style.texts(lang)
    zone = style.zone
    n = len(items)
    lines = []
    for item in items[:SUMMARY_ITEMS]:
        titles = [texts.rule(policy.rules[r], "title", item.internal)
                  if policy and r in policy.rules else r for r in item.titles]
        lines.append(texts.get("sentences", "summary_item",
                               time=texts.when(datetime.fromtimestamp(item.received, UTC), zone),
                               subject=texts.quote(item.subject or texts.get(
                                   "words", "no_subject")),
                               status=texts.data["status"].get(item.action, item.action),
                               titles=texts.join(titles), ref=item.txid))
    if n > SUMMARY_ITEMS:
        lines.append(texts.get("sentences", "summary_more", n=n - SUMMARY_ITEMS))
    intro = texts.count("sentences", "summary_supervisor" if as_supervisor else "summary", n)
    values = {
        "name": name, "summary_intro": intro, "held_text": "\n".join(f"- {x}" for x in lines),
        "held_html": "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>",
        "supervisor_text": "" if as_supervisor else (
            texts.get("sentences", "doubt_supervisor", supervisor=supervisor) if supervisor
            else texts.get("sentences", "doubt")),
        "release_text": texts.get("sentences", "summary_held", days=style.retention_days,
                                  postmaster=style.postmaster)
        if not as_supervisor and any(i.action == "quarantine" for i in items) else "",
        "postmaster": style.postmaster, "ref": items[0].txid if items else "",
        "school": style.school or texts.get("words", "school"),
    }
    txt_t, html_t = texts.template("summary")
    subject = texts.count("subject", "summary", n)
    return (f"{texts.get('words', 'subject_prefix')} {subject}",
            _fill(txt_t, values, is_html=False),
            _fill(html_t, values, is_html=True, raw=("held_html",)))


def render_outcome(outcome: str, style: Style, *, lang: str, name: str, subject: str,
                   recipients: Sequence[str], received: datetime,
                   ref: str) -> tuple[str, str, str]:
    """(subject, text, html) of the notice that an admin released or deleted a held message.
    ``outcome``: "released" or "deleted"."""
    texts = style.texts(lang)
    subject = subject or texts.get("words", "no_subject")
    values = {
        "name": name, "outcome_text": texts.get("sentences", outcome), "subject": subject,
        "recipients": ", ".join(recipients), "time": texts.when(received, style.zone),
        "ref": ref, "postmaster": style.postmaster,
        "school": style.school or texts.get("words", "school"),
    }
    txt_t, html_t = texts.template("release")
    head = texts.get("subject", outcome, subject=subject[:120])
    return (f"{texts.get('words', 'subject_prefix')} {head}",
            _fill(txt_t, values, is_html=False), _fill(html_t, values, is_html=True))




def auto_submitted(message: Message | None) -> str:
    if message is None:
        return ""
    return (message.header("Auto-Submitted") or ["no"])[0].strip().lower()


def wants_notice(message: Message | None, mail_from: str) -> bool:
    """False for mail no one should answer: bounces, auto-submitted mail, notices (RFC 3834)."""
    if not mail_from or message is None:
        return False
    local = mail_from.partition("@")[0].lower()
    if local in ("mailer-daemon", "postmaster") or local.startswith("owner-"):
        return False
    auto = auto_submitted(message)
    if auto and not auto.startswith("no"):
        return False
    if message.header("X-SKOT-Notice"):
        return False
    precedence = (message.header("Precedence") or [""])[0].strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return False
    ctype = message.email.get_content_type()
    return ctype != "multipart/report"


def forward_wants_notice(message: Message | None, verdict: Verdict) -> bool:
    """An automatic forward (``Auto-Submitted: auto-forwarded``) is auto-submitted, yet the
    person whose forwarding rule sent it must hear that it failed: not its author, but the
    owner of the forwarding mailbox. Never for our own notices being forwarded (a loop)."""
    if message is None or message.header("X-SKOT-Notice"):
        return False
    if not auto_submitted(message).startswith("auto-forwarded"):
        return False
    return any(r.mode == "enforce" and r.notice and r.evidence.get("forwarding_mailbox")
               for r in verdict.rules)


@dataclass(frozen=True)
class Notice:
    to: str
    kind: str  # "sender", "forward", "supervisor" or "summary"
    lang: str
    rendered: bytes
    txid: str
    rule_ids: tuple[str, ...]
    suppressed: bool = False  # held back by the rate limit: audited, not sent
    held: tuple[str, ...] = ()  # a summary: the transactions it reports
    error: str = ""  # it could not be built: audited as notice-failed, not sent


def notice_rules(verdict: Verdict, policy: Policy) -> tuple[RulePolicy, ...]:
    """Enforced rules whose policy asks for a notice (monitor mode never notifies)."""
    out = []
    for fired in verdict.rules:
        rp = policy.rules.get(fired.id)
        if rp is not None and rp.notice and fired.mode == "enforce":
            out.append(rp)
    return tuple(out)


def named_rules(verdict: Verdict, policy: Policy) -> tuple[RulePolicy, ...]:
    """Every enforced rule that fired, those that ask for a notice first: all are named."""
    asking = notice_rules(verdict, policy)
    others = tuple(rp for f in verdict.rules if f.mode == "enforce"
                   and (rp := policy.rules.get(f.id)) is not None and rp not in asking)
    return asking + others


WORDS: dict[str, dict[str, str]] = {
    "nl": {"bsn": "{n} BSN-nummer(s)", "iban": "{n} IBAN-rekeningnummer(s)",
           "people": "een tabel met {rows} personen ({columns})",
           "marking": "de markering {words}", "label": "het gevoeligheidslabel {labels}",
           "body": "in de tekst van het bericht", "subject": "in het onderwerp",
           "attachment": "in bijlage {name}", "found": "Gevonden",
           "confidence": "zekerheid: {level}", "high": "hoog", "medium": "gemiddeld",
           "low": "laag", "tag": "alleen gemarkeerd",
           "media": "in bijlage {name}: {n} foto('s) of opname(n) in het document",
           "media_file": "bijlage {name} ({type})", "uninspectable": "{name}: {reason}"},
    "en": {"bsn": "{n} BSN number(s)", "iban": "{n} IBAN account number(s)",
           "people": "a table of {rows} people ({columns})",
           "marking": "the marking {words}", "label": "the sensitivity label {labels}",
           "body": "in the message text", "subject": "in the subject",
           "attachment": "in attachment {name}", "found": "Found",
           "confidence": "confidence: {level}", "high": "high", "medium": "medium",
           "low": "low", "tag": "tagged only",
           "media": "in attachment {name}: {n} photo(s) or recording(s) in the document",
           "media_file": "attachment {name} ({type})", "uninspectable": "{name}: {reason}"},
}
COLUMNS: dict[str, dict[str, str]] = {
    "nl": {"birth_date": "geboortedatum", "pupil_number": "leerlingnummer", "bsn": "BSN",
           "phone": "telefoonnummer", "email": "e-mailadres", "address": "adres",
           "iban": "IBAN", "health": "medische gegevens"},
    "en": {"birth_date": "birth date", "pupil_number": "pupil number", "bsn": "BSN",
           "phone": "phone number", "email": "e-mail address", "address": "address",
           "iban": "IBAN", "health": "medical data"},
}


def finding_lines(evidence: Mapping[str, Any], lang: str) -> list[str]:
    """What a rule found, for the person who sent it: which signal, where (the body, the
    subject or which attachment), how many and how sure; never a value (the numbers, names
    and addresses found stay out of notices as they stay out of the audit)."""
    w = WORDS.get(lang, WORDS["en"])
    lines: list[str] = []
    for item in evidence.get("items") or []:
        if not isinstance(item, Mapping):
            continue
        name = str(item.get("name", ""))
        where = w.get(str(item.get("where", "")), w["attachment"]).format(name=name)
        if item.get("findings"):
            for f in item["findings"]:
                what = _finding_text(f, w, COLUMNS.get(lang, COLUMNS["en"]))
                level = w.get(str(f.get("confidence", "")), "")
                extra = [w["confidence"].format(level=level)] if level else []
                if f.get("action") == "tag":
                    extra.append(w["tag"])
                suffix = f" ({', '.join(extra)})" if extra else ""
                lines.append(f"{w['found']}: {what} {where}{suffix}.")
        elif item.get("reason"):
            lines.append(w["uninspectable"].format(name=name, reason=item["reason"]) + ".")
        elif item.get("embedded_images"):
            lines.append(f"{w['found']}: " + w["media"].format(
                name=name, n=item["embedded_images"]) + ".")
        elif item.get("type"):
            lines.append(f"{w['found']}: " + w["media_file"].format(
                name=name, type=item["type"]) + ".")
    return list(dict.fromkeys(lines))  # a body in text and HTML finds the same once


def _finding_text(f: Mapping[str, Any], w: Mapping[str, str], cols: Mapping[str, str]) -> str:
    sig = str(f.get("signal", ""))
    if sig in ("bsn", "iban"):
        return w[sig].format(n=f.get("count", 0))
    if sig == "people":
        columns = ", ".join(cols.get(str(c), str(c)) for c in f.get("columns") or [])
        return w["people"].format(rows=f.get("rows", 0), columns=columns)
    if sig == "marking":
        return w["marking"].format(words=", ".join(f"'{x}'" for x in f.get("words") or []))
    if sig == "label":
        return w["label"].format(labels=", ".join(f"'{x}'" for x in f.get("labels") or []
                                                  if not _is_guid(str(x))))
    return sig


def _is_guid(value: str) -> bool:
    return bool(re.fullmatch(r"\{?[0-9a-fA-F-]{36}\}?", value))


def build_mail(*, postmaster: str, to: str, subject: str, text: str, body_html: str,
               txid: str, in_reply_to: str, hostname: str,
               rule_ids: Sequence[str] = (), reply_to: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = postmaster
    msg["To"] = to
    if reply_to:  # a reply to the notice is the sender's release request (milter.selfrelease)
        msg["Reply-To"] = reply_to
    msg["Subject"] = " ".join(subject.split())
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid("notice", domain=hostname)
    if in_reply_to:
        msg["In-Reply-To"] = " ".join(in_reply_to.split())
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-SKOT-Notice"] = txid or "summary"
    if rule_ids:  # for IT: the rule ids stay out of the prose
        msg["X-SKOT-Rules"] = ", ".join(rule_ids)
    msg.set_content(text)
    msg.add_alternative(body_html, subtype="html")
    # Headers folded only past 998 octets: the default (78) folds a long subject right after
    # "Subject:", which some clients show with a leading space.
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n", max_line_length=998))



def build_notice(style: Style, hostname: str, req: NoticeRequest, to: str, kind: str,
                 lang: str, name: str, held: int, *, sender_name: str = "",
                 supervisor: str = "") -> Notice:
    """One notice, rendered and wrapped as a mail (a reply to the sender's own notice goes
    to the release address)."""
    subject, text, body_html = render(req, style, lang=lang, name=name, kind=kind,
                                      sender_name=sender_name, supervisor=supervisor,
                                      also_held=held)
    ids = tuple(rp.id for rp in req.rules)
    raw = build_mail(postmaster=style.postmaster, to=to, subject=subject, text=text,
                     body_html=body_html, txid=req.txid, in_reply_to=req.message_id,
                     hostname=hostname, rule_ids=ids,
                     reply_to=req.release_address if kind == "sender" else "")
    return Notice(to, kind, lang, raw, req.txid, ids)


def release_copy(policy: Policy, style: Style, directory: Any, hostname: str,
                 meta: Mapping[str, Any], sender: str, reason: str,
                 subject: str) -> Notice | None:
    """The supervisor's copy of a self-released message's notice, opening with the sender's
    reason (by reply or by the web view's link); None when the sender has no supervisor in
    the directory."""
    from milter.selfrelease import verdict_of

    verdict = verdict_of(meta)
    rules = tuple(rp for r in verdict.rules if (rp := policy.rules.get(r.id)))
    person = directory.lookup(sender)
    supervisor = person.supervisor if person is not None else ""
    if not rules or not supervisor:
        return None
    sup = directory.lookup(supervisor)
    lang = sup.language if sup is not None and sup.language else style.language
    who = person.name if person is not None and person.name else sender
    texts = style.texts(lang)
    env = meta.get("envelope", {})
    req = NoticeRequest(txid=str(meta.get("txid", "")), verdict=verdict, mail_from=sender,
                        rcpt_tos=tuple(env.get("rcpt_tos", [])), subject=subject,
                        message_id="",
                        received=datetime.fromtimestamp(float(meta.get("stored_at", 0)), UTC),
                        rules=rules, intro=texts.get("sentences", "self_released",
                                                     sender=who, reason=texts.quote(reason)))
    sup_name = sup.name if sup is not None and sup.name else supervisor.partition("@")[0]
    return build_notice(style, hostname, req, supervisor, "supervisor", lang, sup_name, 0,
                        sender_name=who)



def request_for(txid: str, verdict: Verdict, policy: Policy, message: Message | None,
                mail_from: str, rcpt_tos: Sequence[str],
                summary: Mapping[str, Any]) -> NoticeRequest | None:
    """A notice request if this transaction deserves one, else None."""
    if not notice_rules(verdict, policy):
        return None
    if not wants_notice(message, mail_from) and not forward_wants_notice(message, verdict):
        return None
    subject = message.subject if message is not None else str(summary.get("subject", ""))
    return NoticeRequest(txid=txid, verdict=verdict, mail_from=mail_from,
                         rcpt_tos=tuple(rcpt_tos), subject=subject,
                         message_id=message.message_id if message is not None else "",
                         received=datetime.now(UTC), rules=named_rules(verdict, policy))
