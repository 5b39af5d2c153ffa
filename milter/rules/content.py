"""Articles A1/C1 (no confidential or personal information leaves) and A5 (no media of
school life published without permission): what staff attach to mail for outside recipients.

Content rules judge outbound mail only. With internal recipients alone they tag at most; with
any external recipient the external ones decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from milter.core.context import Context
from milter.core.message import Message
from milter.inspect import Item, inspect_message
from milter.inspect.detectors import count_bsn, count_iban, markings, pupil_rows
from milter.rules import Finding, rule

DEFAULT_MARKINGS = ["vertrouwelijk", "confidential", "leerlingdossier", "personeelsdossier",
                    "zorgdossier", "OPP", "ontwikkelingsperspectief", "groeidocument",
                    "handelingsplan", "medisch dossier", "strikt persoonlijk"]


def _cap(ctx: Context) -> str | None:
    """External recipients decide; internal-only mail is tagged at most."""
    return None if ctx.external_recipients else "tag"


def _item_evidence(item: Item, **signals: Any) -> dict[str, Any]:
    return {"name": item.name, "type": item.kind, "size": item.size, "sha256": item.sha256,
            **{k: v for k, v in signals.items() if v}}


@rule("A1.confidential-attachment", markings=DEFAULT_MARKINGS, case_sensitive_markings=["OPP"],
      label_names=["Vertrouwelijk", "Zeer vertrouwelijk", "Confidential",
                   "Highly Confidential", "Intern vertrouwelijk"],
      label_ids=[], min_bsn=1, min_iban=3, pupil_list_min_rows=10, check_subject=True)
def confidential_attachment(message: Message, ctx: Context,
                            params: Mapping[str, Any]) -> Finding | None:
    if ctx.direction != "outbound":
        return None
    report = inspect_message(message, ctx.limits)
    words = list(params["markings"])
    case_sensitive = list(params["case_sensitive_markings"])
    label_names = {str(n).lower() for n in params["label_names"]}
    label_ids = {str(i).lower().strip("{}") for i in params["label_ids"]}
    hits: list[dict[str, Any]] = []
    for item in report.items:
        bsn = count_bsn(item.text)
        iban = count_iban(item.text)
        rows = pupil_rows(item.rows) if item.rows else 0
        marks = [] if item.is_body else markings([item.name, item.text], words, case_sensitive)
        labels = sorted(lbl for lbl in item.labels
                        if lbl.lower() in label_names or lbl.lower() in label_ids)
        signals = {
            "bsn": bsn if bsn >= params["min_bsn"] else 0,
            "iban": iban if iban >= params["min_iban"] else 0,
            "pupil_rows": rows if rows >= params["pupil_list_min_rows"] else 0,
            "markings": marks, "labels": labels,
        }
        if any(signals.values()):
            hits.append(_item_evidence(item, **signals))
    subject_marks = (markings([message.subject], words, case_sensitive)
                     if params["check_subject"] and message.attachments else [])
    if not hits and not subject_marks:
        return None
    evidence: dict[str, Any] = {"items": hits,
                                "external_recipients": len(ctx.external_recipients)}
    if subject_marks:
        evidence["subject_markings"] = subject_marks
    kinds = sorted({k for h in hits for k in ("bsn", "iban", "pupil_rows", "markings", "labels")
                    if k in h} | ({"subject"} if subject_marks else set()))
    return Finding(reason="confidential content: " + ", ".join(kinds), evidence=evidence,
                   max_action=_cap(ctx))


@rule("A1.uninspectable")
def uninspectable(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    if ctx.direction != "outbound":
        return None
    report = inspect_message(message, ctx.limits)
    bad = [_item_evidence(i, reason=i.uninspectable) for i in report.items if i.uninspectable]
    if not bad:
        return None
    return Finding(reason="cannot inspect: " + "; ".join(b["reason"] for b in bad)[:300],
                   evidence={"items": bad, "external_recipients": len(ctx.external_recipients)},
                   max_action=_cap(ctx))


@rule("A5.media-external", allowed_group="media", min_bytes=20000)
def media_external(message: Message, ctx: Context, params: Mapping[str, Any]) -> Finding | None:
    if ctx.direction != "outbound" or not ctx.external_recipients:
        return None
    sender = ctx.envelope.auth_user or ctx.envelope.mail_from
    person = ctx.person(sender) if "@" in sender else None
    if person is not None and params["allowed_group"] in person.groups:
        return None
    report = inspect_message(message, ctx.limits)
    media = [_item_evidence(i) for i in report.attachments
             if i.media and i.size >= params["min_bytes"]]
    if not media:
        return None
    kinds = sorted({m["type"] for m in media})
    return Finding(reason="photo/video/audio to external recipients: " + ", ".join(kinds),
                   evidence={"items": media,
                             "external_recipients": len(ctx.external_recipients)})
