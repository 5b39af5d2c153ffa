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


def copy_templates(tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(TEMPLATES, tmp_path / "notices")
    return tmp_path / "notices"


def test_per_rule_override_is_used_for_that_rule_only(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "nl" / "A1.confidential-attachment.txt").write_text(
        "Eigen tekst van de school over {rule_title}: {subject} {recipients} {advice} {ref}\n")
    (templates / "nl" / "A1.confidential-attachment.html").write_text(
        "<p>Eigen tekst: {subject} {recipients} {advice} {ref}</p>\n")
    policy = load(POLICY)
    a1 = policy.rules["A1.confidential-attachment"]
    _, text, body_html = render(request(a1.id, "quarantine"), "nl", name="S", school="",
                                postmaster="pm", templates=templates, rule=a1)
    assert text.startswith("Eigen tekst van de school over " + a1.text("title", "nl"))
    assert body_html.startswith("<p>Eigen tekst: Rapport &lt;Jan&gt; &amp; co")
    b1 = policy.rules["B1.sender-domain"]
    _, text, _ = render(request(b1.id, "reject"), "nl", name="S", school="", postmaster="pm",
                        templates=templates, rule=b1)
    assert "Eigen tekst" not in text and text.startswith("Beste S,")
    _, text, _ = render(request(a1.id, "quarantine"), "en", name="S", school="",
                        postmaster="pm", templates=templates, rule=a1)
    assert "Eigen tekst" not in text  # the English notice keeps the default
    assert template_problems(templates, set(policy.rules)) == []


def test_overrides_that_would_never_be_used_are_reported(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    body = "{subject} {recipients} {advice} {ref}"
    (templates / "nl" / "A1.confidentail-attachment.txt").write_text(body)  # typo in the id
    (templates / "nl" / "A1.confidentail-attachment.html").write_text(body)
    (templates / "en" / "B1.sender-domain.txt").write_text(body)  # html part forgotten
    problems = "\n".join(template_problems(templates, set(load(POLICY).rules)))
    assert "override for unknown rule 'A1.confidentail-attachment'" in problems
    assert "B1.sender-domain.txt: override without B1.sender-domain.html" in problems
    assert len(template_problems(templates, set(load(POLICY).rules))) == 2


def test_cli_preview_and_config_check(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from milter.cli import main
    from tests.conftest import write_config

    cfg = write_config(tmp_path)
    assert main(["notice", "preview", "A1.confidential-attachment", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    a1 = load(POLICY).rules["A1.confidential-attachment"]
    assert out.startswith("Subject: [Mailgateway] Je bericht is tegengehouden")
    assert a1.text("title", "nl") in out and "01example0ref" in out
    assert "vrij te geven" in out and re.search(r"\{[a-z_]+\}", out) is None
    assert main(["notice", "preview", "A1.confidential-attachment", "--lang", "en", "--html",
                 "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert html.escape(a1.text("title", "en")) in out and "<html" in out
    assert main(["notice", "preview", "Z9.nope", "--config", str(cfg)]) == 2
    assert "no rule Z9.nope" in capsys.readouterr().err

    templates = copy_templates(tmp_path)
    (templates / "en" / "notice.txt").write_text("Hi {nmae}, {subject} {recipients} {ref}")
    cfg.write_text(cfg.read_text() + f'\n[notices]\ntemplates = "{templates}"\n')
    assert main(["config", "check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "en/notice.txt: unknown placeholder(s) {nmae}" in err
    assert "en/notice.txt: missing placeholder(s) {advice}" in err


def test_a_notice_that_cannot_be_built_is_audited(tmp_path: Path) -> None:
    import asyncio

    from milter.directory import parse_csv
    from milter.notices import Notifier

    class Audit:
        def __init__(self) -> None:
            self.events: list[object] = []

        async def append(self, event: object) -> None:
            self.events.append(event)

    templates = copy_templates(tmp_path)
    (templates / "nl" / "notice.txt").write_text("{subject} {recipients} {advice} {ref} {")
    audit = Audit()
    n = Notifier(policy=load(POLICY), templates=templates, school="", language="nl",
                 postmaster="postmaster@school.example", hostname="relay.school.example",
                 next_hop="maildir:/nonexistent", timeout=1,
                 limiter=RateLimiter(tmp_path / "n.sqlite3", 5), directory=parse_csv(PEOPLE),
                 school_domains=("school.example",), audit=audit)

    async def go() -> None:
        n.schedule(supervised_request())
        await n.drain()

    asyncio.run(go())
    (event,) = audit.events
    assert event.event == "notice-failed"  # type: ignore[attr-defined]
    assert "could not be built" in event.reply  # type: ignore[attr-defined]


def test_stop_does_not_hang_on_a_notice_being_retried(tmp_path: Path) -> None:
    import asyncio
    import socket

    from milter.directory import parse_csv
    from milter.notices import Notifier

    class Audit:
        def __init__(self) -> None:
            self.events: list[object] = []

        async def append(self, event: object) -> None:
            self.events.append(event)

    with socket.socket() as s:  # a loopback port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    audit = Audit()
    n = Notifier(policy=load(POLICY), templates=TEMPLATES, school="", language="nl",
                 postmaster="postmaster@school.example", hostname="relay.school.example",
                 next_hop=f"smtp://127.0.0.1:{port}", timeout=1,
                 limiter=RateLimiter(tmp_path / "n.sqlite3", 5), directory=parse_csv(PEOPLE),
                 school_domains=("school.example",), audit=audit, retries=5, retry_delay=60)

    async def go() -> None:
        n.schedule(supervised_request())
        await asyncio.wait_for(n.drain(timeout=1.0), timeout=10)

    asyncio.run(go())
    assert n.tasks == set()
    events = sorted((e.event, e.recipients, e.reply) for e in audit.events)  # type: ignore
    assert [(ev, to) for ev, to, _ in events] == [
        ("notice-failed", ("boss@school.example",)), ("notice-failed", ("sam@school.example",))]
    assert all("gateway stopped" in reply for _, _, reply in events)


def test_supervisor_notices_are_rate_limited_and_summarised(tmp_path: Path) -> None:
    from email import message_from_bytes
    from email import policy as email_policy

    n = notifier(tmp_path, PEOPLE)
    plans = [n.plan(supervised_request()) for _ in range(8)]  # type: ignore[attr-defined]
    to_boss = [x for plan in plans for x in plan if x.kind == "supervisor"]
    assert len(to_boss) == 5  # rate_per_hour = 5 in notifier()
    n.limiter._db.execute("UPDATE sent SET ts = ts - 3700")  # type: ignore[attr-defined]
    (_, boss) = n.plan(supervised_request())  # type: ignore[attr-defined]
    body = message_from_bytes(boss.rendered, policy=email_policy.default).get_body(
        ("plain",)).get_content()  # type: ignore[union-attr]
    assert "3 andere meldingen" in body
