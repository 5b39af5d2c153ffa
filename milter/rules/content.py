"""Articles A1/C1 (no confidential or personal information leaves) and A5 (no media of
school life published without permission): what staff attach to mail for outside recipients.

Content rules judge outbound mail only. With internal recipients alone they tag at most; with
any external recipient the external ones decide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from milter.core.context import Context
from milter.core.message import Message
from milter.inspect import Item, inspect_message
from milter.inspect.detectors import (
    CONFIDENCE,
    DEFAULT_BSN_KEYWORDS,
    HIGH,
    LOW,
    MEDIUM,
    NONE,
    bsn_in_rows,
    bsn_in_text,
    iban_numbers,
    marking_levels,
    normalise_iban,
)
from milter.inspect.tables import best_people_table, text_tables
from milter.rules import Finding, rule

DEFAULT_MARKINGS = ["vertrouwelijk", "confidential", "leerlingdossier", "personeelsdossier",
                    "zorgdossier", "OPP", "ontwikkelingsperspectief", "groeidocument",
                    "handelingsplan", "medisch dossier", "strikt persoonlijk", "diagnose"]
# Health words: personal data when a sentence names someone and holds two of them (or one
# and a marking); alone, or in a letter to all parents, they mark nothing.
DEFAULT_HEALTH_WORDS = ["allergie", "allergisch", "medicatie", "medicijn", "ADHD", "ADD",
                        "autisme", "epilepsie", "diabetes", "dyslexie", "dyscalculie",
                        "astma", "depressie", "angststoornis", "diagnose"]
LEVELS = {"low": LOW, "medium": MEDIUM, "high": HIGH}


def _cap(ctx: Context) -> str | None:
    """External recipients decide; internal-only mail is tagged at most."""
    return None if ctx.external_recipients else "tag"


def _item_evidence(item: Item, **signals: Any) -> dict[str, Any]:
    return {"name": item.name, "type": item.kind, "size": item.size, "sha256": item.sha256,
            **{k: v for k, v in signals.items() if v}}


def _where(item: Item) -> str:
    return "body" if item.is_body else "attachment"


class _Judge:
    """Maps a finding's confidence and count to what it does, from the policy params:
    ``act_confidence`` and up take the rule's action, ``tag_confidence`` and up only tag."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.act = LEVELS[str(params["act_confidence"])]  # values checked on policy load
        tag = str(params["tag_confidence"])
        self.tag = LEVELS[tag] if tag != "none" else HIGH + 1

    def counted(self, levels: Mapping[str, int], minimum: int, signal: str,
                **extra: Any) -> dict[str, Any] | None:
        """The finding for distinct ``levels`` (value -> confidence; values stay here)."""
        for floor, effect in ((self.act, ""), (min(self.tag, self.act), "tag")):
            hits = [lvl for lvl in levels.values() if lvl >= floor and lvl > NONE]
            if len(hits) >= minimum and hits:
                finding = {"signal": signal, "count": len(hits),
                           "confidence": CONFIDENCE[min(hits)], **extra}
                if effect:
                    finding["action"] = effect
                return finding
        return None

    def level(self, level: int, signal: str, **extra: Any) -> dict[str, Any] | None:
        if level >= self.act:
            return {"signal": signal, "confidence": CONFIDENCE[level], **extra}
        if level >= self.tag:
            return {"signal": signal, "confidence": CONFIDENCE[level], "action": "tag", **extra}
        return None


@rule("A1.confidential-attachment", markings=DEFAULT_MARKINGS, case_sensitive_markings=["OPP"],
      label_names=["Vertrouwelijk", "Zeer vertrouwelijk", "Confidential",
                   "Highly Confidential", "Intern vertrouwelijk"],
      label_ids=[], min_bsn=1, min_iban=3, pupil_list_min_rows=10, check_subject=True,
      check_body=True, own_ibans=[], bsn_keywords=DEFAULT_BSN_KEYWORDS, keyword_window=300,
      act_confidence="medium", tag_confidence="none",
      classification_markings=["vertrouwelijk", "confidential", "strikt persoonlijk"],
      health_words=DEFAULT_HEALTH_WORDS,
      choices={"act_confidence": ("low", "medium", "high"),
               "tag_confidence": ("none", "low", "medium", "high")})
def confidential_attachment(message: Message, ctx: Context,
                            params: Mapping[str, Any]) -> Finding | None:
    """Confidential or personal content in what goes outside: attachments, the body and the
    subject. Each detector reports a confidence from context; the policy params say which
    confidence and how many distinct findings take the action (quarantine) or only tag."""
    if ctx.direction != "outbound":
        return None
    report = inspect_message(message, ctx.limits)
    judge = _Judge(params)
    words = list(params["markings"])
    case_sensitive = list(params["case_sensitive_markings"])
    label_names = {str(n).lower() for n in params["label_names"]}
    label_ids = {str(i).lower().strip("{}") for i in params["label_ids"]}
    own = {normalise_iban(str(i)) for i in params["own_ibans"]}
    keywords = [str(k) for k in params["bsn_keywords"]]
    window = int(params["keyword_window"])
    hits: list[dict[str, Any]] = []
    for item in report.items:
        if item.is_body and not params["check_body"]:
            continue
        findings = _item_findings(item, judge, params, words, case_sensitive, label_names,
                                  label_ids, own, keywords, window, ctx.school_domains)
        if findings:
            hits.append(_item_evidence(item, where=_where(item), findings=findings,
                                       **_legacy(findings)))
    if params["check_subject"] and message.subject:
        # A subject names what the mail is about: "Uitnodiging gesprek handelingsplan" to
        # the parents is ordinary school mail. A classification ("Vertrouwelijk: ...") in
        # the subject is a marking of its own; a care word counts when the subject also
        # names someone ("OPP Sem"), else it is prose.
        classification = {str(w).lower() for w in params["classification_markings"]}
        found = marking_levels(message.subject, words, case_sensitive, "subject")
        named = _names_someone(message.subject, found)
        marks = {w: (lvl if named or w.lower() in classification else min(lvl, LOW))
                 for w, lvl in found.items()}
        finding = _marking_finding(judge, marks)
        if finding:
            hits.append({"name": "(subject)", "where": "subject", "findings": [finding],
                         "markings": finding["words"]})
    if not hits:
        return None
    acting = [f for h in hits for f in h["findings"] if "action" not in f]
    evidence: dict[str, Any] = {"items": hits,
                                "external_recipients": len(ctx.external_recipients)}
    kinds = sorted({f["signal"] for h in hits for f in h["findings"]})
    cap = _cap(ctx) if acting else "tag"
    return Finding(reason="confidential content: " + ", ".join(kinds), evidence=evidence,
                   max_action=cap)


_WORD = re.compile(r"[^\W\d_][\w'-]*")


def _names_someone(subject: str, markings: Mapping[str, int]) -> bool:
    """A capitalised word that is neither the first word nor a marking: most likely a name
    ("OPP Sem", "Handelingsplan Jan de Vries")."""
    marks = {m.lower() for m in markings}
    words = [w for w in _WORD.findall(subject) if w.lower() not in marks]
    first = _WORD.search(subject)
    return any(w[0].isupper() and w[1:].islower() and len(w) > 1
               and not (first and w == first.group(0)) for w in words)


def _legacy(findings: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-signal keys earlier audit records carry (bsn, iban, pupil_rows, markings,
    labels), for the findings that take the action: reports keep reading them."""
    out: dict[str, Any] = {}
    for f in findings:
        if "action" in f:
            continue
        sig = f["signal"]
        if sig in ("bsn", "iban"):
            out[sig] = f["count"]
        elif sig == "people":
            out["pupil_rows"] = f["rows"]
        elif sig == "marking":
            out["markings"] = f["words"]
        elif sig == "label":
            out["labels"] = f["labels"]
    return out


def _marking_finding(judge: _Judge, marks: Mapping[str, int]) -> dict[str, Any] | None:
    if not marks:
        return None
    top = max(marks.values())
    return judge.level(top, "marking", words=sorted(w for w, lvl in marks.items()
                                                    if lvl == top))


def _item_findings(item: Item, judge: _Judge, params: Mapping[str, Any], words: list[str],
                   case_sensitive: list[str], label_names: set[str], label_ids: set[str],
                   own: set[str], keywords: list[str], window: int,
                   school_domains: tuple[str, ...]) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    tables: list[list[list[str]]] = [item.rows] if item.rows else []
    if item.text and not item.rows:
        tables = text_tables(item.text)
    bsns = bsn_in_text(item.text, keywords, window) if item.text else {}
    for t in tables:
        bsn_in_rows(t, keywords, bsns)
    f = judge.counted(bsns, int(params["min_bsn"]), "bsn")
    if f:
        findings.append(f)
    ibans = {i: HIGH for i in iban_numbers(item.text) if i not in own} if item.text else {}
    f = judge.counted(ibans, int(params["min_iban"]), "iban")
    if f:
        findings.append(f)
    people = best_people_table(tables, school_domains)
    if people.rows >= int(params["pupil_list_min_rows"]):
        f = judge.level(people.confidence, "people", rows=people.rows,
                        columns=list(people.kinds))
        if f:
            findings.append(f)
    marks: dict[str, int] = {}
    if not item.is_body:
        marks.update(marking_levels(item.name, words, case_sensitive, "name"))
    for w, lvl in marking_levels(item.text, words, case_sensitive, _where(item),
                                 [str(h) for h in params["health_words"]]).items():
        marks[w] = max(lvl, marks.get(w, NONE))
    f = _marking_finding(judge, marks)
    if f:
        findings.append(f)
    labels = sorted(lbl for lbl in item.labels
                    if lbl.lower() in label_names or lbl.lower() in label_ids)
    if labels:
        f = judge.level(HIGH, "label", labels=labels)
        if f:
            findings.append(f)
    return findings


@rule("A1.uninspectable")
def uninspectable(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    if ctx.direction != "outbound":
        return None
    report = inspect_message(message, ctx.limits)
    bad = [_item_evidence(i, reason=i.uninspectable, defects=i.defects)
           for i in report.items if i.uninspectable]
    if not bad:
        return None
    return Finding(reason="cannot inspect: " + "; ".join(b["reason"] for b in bad)[:300],
                   evidence={"items": bad, "external_recipients": len(ctx.external_recipients)},
                   max_action=_cap(ctx))


@rule("A5.media-external", allowed_group="media", min_bytes=20000)
def media_external(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    if ctx.direction != "outbound" or not ctx.external_recipients:
        return None
    if _media_allowed(message, ctx, str(params["allowed_group"])):
        return None
    report = inspect_message(message, ctx.limits)
    minimum = int(params["min_bytes"])
    media: list[dict[str, Any]] = []
    for i in report.attachments:
        embedded = sum(1 for size in i.images if size >= minimum)
        if i.media and i.size >= minimum:
            media.append(_item_evidence(i))
        elif embedded:
            media.append(_item_evidence(i, embedded_images=embedded))
    if not media:
        return None
    kinds = sorted({m["type"] for m in media})
    return Finding(reason="photo/video/audio to external recipients: " + ", ".join(kinds),
                   evidence={"items": media,
                             "external_recipients": len(ctx.external_recipients)})


def _media_allowed(message: Message, ctx: Context, group: str) -> bool:
    """The exemption is for people, judged on who they are: the authenticated user when there
    is one, and every ``From:`` author. The envelope sender alone proves nothing (anyone can
    write a colleague's address in MAIL FROM)."""
    who = [a.addr_spec for a in message.authors if a.valid]
    if ctx.envelope.auth_user:
        who.append(ctx.envelope.auth_user)
    if not who:
        return False
    for address in who:
        person = ctx.person(address) if "@" in address else None
        if person is None or group not in person.groups:
            return False
    return True
