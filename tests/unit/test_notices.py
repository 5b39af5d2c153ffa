"""Notices: every rule renders in both languages; loop protection; the rate limiter."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from milter.core.message import parse
from milter.core.verdict import FiredRule, Verdict
from milter.notices import (
    NoticeRequest,
    RateLimiter,
    render,
    template_problems,
    wants_notice,
)
from milter.policy import load
from tests.conftest import POLICY, make_message

TEMPLATES = POLICY.parent / "notices"
RULES = sorted(load(POLICY).rules.values(), key=lambda r: r.id)


def request(rule_id: str, action: str) -> NoticeRequest:
    rp = load(POLICY).rules[rule_id]
    verdict = Verdict(action, "outbound", "", (FiredRule(rule_id, rp.article, action, "enforce",
                                                         "x"),), "01ref")
    return NoticeRequest("01ref", verdict, "someone@school.example", ("ouder@example.org",),
                         "Rapport <Jan> & co", "<m@s>", datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
                         (rp,))


@pytest.mark.parametrize("lang", ["nl", "en"])
@pytest.mark.parametrize("rp", RULES, ids=[r.id for r in RULES])
def test_every_rule_renders_in_both_languages(rp: object, lang: str) -> None:
    rule = rp  # a RulePolicy
    req = request(rule.id, rule.action)  # type: ignore[attr-defined]
    subject, text, body_html = render(req, lang, name="Sam", school="De Regenboog",
                                      postmaster="postmaster@school.example",
                                      templates=TEMPLATES, rule=rule)  # type: ignore[arg-type]
    title = rule.text("title", lang)  # type: ignore[attr-defined]
    for part, expected_title in ((text, title), (body_html, html.escape(title))):
        assert re.search(r"\{[a-z_]+\}", part) is None  # every placeholder filled
        assert "01ref" in part and "ouder@example.org" in part
        assert expected_title in part
    assert rule.text("advice", lang).split(".")[0] in text  # type: ignore[attr-defined]
    assert "Rapport <Jan> & co" in text and "Rapport &lt;Jan&gt; &amp; co" in body_html
    assert "<Jan>" not in body_html
    assert subject.startswith("[Mail")


def test_release_instructions_only_for_quarantine() -> None:
    rp = load(POLICY).rules["A1.confidential-attachment"]
    _, text, _ = render(request(rp.id, "quarantine"), "nl", name="S", school="", postmaster="pm",
                        templates=TEMPLATES, rule=rp)
    assert "vrij te geven" in text
    _, text, _ = render(request(rp.id, "reject"), "nl", name="S", school="", postmaster="pm",
                        templates=TEMPLATES, rule=rp)
    assert "vrij te geven" not in text


def test_bundled_templates_have_no_problems() -> None:
    assert template_problems(TEMPLATES) == []


def test_template_problems_found(tmp_path: Path) -> None:
    (tmp_path / "nl").mkdir()
    (tmp_path / "nl" / "notice.txt").write_text("Hoi {naam}, {subject} {recipients} {ref}")
    (tmp_path / "nl" / "notice.html").write_text("{subject} {ref} {advice} {recipients}")
    problems = "\n".join(template_problems(tmp_path))
    assert "unknown placeholder(s) {naam}" in problems
    assert "missing placeholder(s) {advice}" in problems
    assert "en/notice.txt: missing" in problems


@pytest.mark.parametrize("extra,mail_from,expected", [
    ("", "someone@school.example", True),
    ("Auto-Submitted: auto-replied\r\n", "someone@school.example", False),
    ("Auto-Submitted: auto-generated\r\n", "someone@school.example", False),
    ("Auto-Submitted: no\r\n", "someone@school.example", True),
    ("X-SKOT-Notice: 01abc\r\n", "someone@school.example", False),
    ("Precedence: bulk\r\n", "someone@school.example", False),
    ("", "", False),
    ("", "MAILER-DAEMON@school.example", False),
    ("Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n",
     "someone@school.example", False),
])
def test_no_notice_for_automatic_mail(extra: str, mail_from: str, expected: bool) -> None:
    assert wants_notice(parse(make_message(extra_headers=extra)), mail_from) is expected


def test_rate_limiter_holds_and_summarises(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path / "n.sqlite3", per_hour=5)
    t = 1_000_000.0
    results = [limiter.admit("Someone@school.example", now=t + i) for i in range(50)]
    assert sum(ok for ok, _ in results) == 5
    assert all(held == 0 for _, held in results)
    # an hour later the next notice goes out and says how many were held back
    assert limiter.admit("someone@school.example", now=t + 3700) == (True, 45)
    assert limiter.admit("other@school.example", now=t + 10) == (True, 0)


def notifier(tmp_path: Path, people: str) -> object:
    from milter.directory import parse_csv
    from milter.notices import Notifier

    return Notifier(policy=load(POLICY), templates=TEMPLATES, school="De Regenboog",
                    postmaster="postmaster@school.example", language="nl",
                    hostname="relay.school.example", next_hop="maildir:/nonexistent",
                    timeout=1, limiter=RateLimiter(tmp_path / "n.sqlite3", 5),
                    directory=parse_csv(people), school_domains=("school.example",))


PEOPLE = ("address;role;name;private_addresses;supervisor;language\n"
          "sam@school.example;staff;Sam Smit;;boss@school.example;en\n"
          "boss@school.example;staff;Bea Baas;;;\n")


def supervised_request(rule_id: str = "A1.confidential-attachment") -> NoticeRequest:
    from dataclasses import replace

    rp = replace(load(POLICY).rules[rule_id], notice_supervisor=True)
    verdict = Verdict("quarantine", "outbound", "", (FiredRule(rule_id, rp.article,
                                                               "quarantine", "enforce", "x"),),
                      "01ref")
    return NoticeRequest("01ref", verdict, "sam@school.example", ("ouder@example.org",),
                         "Rapport", "<m@s>", datetime(2026, 1, 2, 3, 4, tzinfo=UTC), (rp,))


def test_plan_per_person_language_and_supervisor(tmp_path: Path) -> None:
    from email import message_from_bytes
    from email import policy as email_policy

    plan = notifier(tmp_path, PEOPLE).plan(supervised_request())  # type: ignore[attr-defined]
    assert [(n.to, n.kind, n.lang) for n in plan] == [
        ("sam@school.example", "sender", "en"), ("boss@school.example", "supervisor", "nl")]
    sender = message_from_bytes(plan[0].rendered, policy=email_policy.default)
    assert sender["Subject"].startswith("[Mail gateway] Your message was held in quarantine")
    boss = message_from_bytes(plan[1].rendered, policy=email_policy.default)
    body = boss.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "als leidinggevende van Sam Smit" in body


def test_no_notice_to_outside_addresses(tmp_path: Path) -> None:
    from dataclasses import replace

    req = replace(supervised_request(), mail_from="someone@gmail.example")
    assert notifier(tmp_path, PEOPLE).plan(req) == []  # type: ignore[attr-defined]
