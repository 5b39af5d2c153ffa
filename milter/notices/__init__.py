"""Notices: tell a staff member, in plain words, what was stopped, why and what to do instead.

Everything a teacher reads is data beside the policy (``policies/notices/<set>/``: the
templates ``notice``, ``summary`` and ``release`` as ``.txt`` and ``.html``, and
``texts.toml`` with every other word; the sets are ``nl`` (register "je"), ``nl-u``
(register "u", ``notices.register_nl``) and ``en``; the variables are documented in
``policies/notices/README.md``). A notice names the file and what was found in it from the
audit evidence (names and counts, never a matched value), gives the local time in words,
and for a held message the day it will be deleted and how to ask for its release.

Notices go out from the postmaster address through the next hop *after* the client has its
answer, only to school addresses (no backscatter), never for bounces, notices or
auto-submitted mail (RFC 3834), except an automatic forward: its notice goes to the owner of
the forwarding mailbox. At most ``notices.rate_per_hour`` per address: each one held back
is audited (``notice-suppressed``) and, when the hour is over, one summary lists them.

``texts`` holds the words and the checks of a site's own texts, ``render`` turns a decision
into a notice (pure: no sockets), ``notifier`` sends them after the answer, within the limit.
"""

from __future__ import annotations

from milter.notices.notifier import (
    Notifier,
    RateLimiter,
)
from milter.notices.render import (
    COLUMNS,
    WORDS,
    HeldItem,
    Notice,
    NoticeRequest,
    auto_submitted,
    build_mail,
    build_notice,
    describe,
    finding_lines,
    forward_wants_notice,
    named_rules,
    notice_rules,
    release_copy,
    render,
    render_outcome,
    render_summary,
    request_for,
    wants_notice,
)
from milter.notices.texts import (
    COMMON,
    KINDS,
    LANGS,
    PLACEHOLDERS,
    REQUIRED,
    SETS,
    SUMMARY_ITEMS,
    TEXT_KEYS,
    Style,
    Texts,
    fields_of,
    template_paths,
    template_problems,
    text_set,
)

__all__ = [
    "COLUMNS",
    "COMMON",
    "HeldItem",
    "KINDS",
    "LANGS",
    "Notice",
    "NoticeRequest",
    "Notifier",
    "PLACEHOLDERS",
    "REQUIRED",
    "RateLimiter",
    "SETS",
    "SUMMARY_ITEMS",
    "Style",
    "TEXT_KEYS",
    "Texts",
    "WORDS",
    "auto_submitted",
    "build_mail",
    "build_notice",
    "describe",
    "fields_of",
    "finding_lines",
    "forward_wants_notice",
    "named_rules",
    "notice_rules",
    "release_copy",
    "render",
    "render_outcome",
    "render_summary",
    "request_for",
    "template_paths",
    "template_problems",
    "text_set",
    "wants_notice",
]
