"""Notices as a teacher reads them: what was found (from the evidence, never a value), local
time in words, the right title for mail to colleagues, every rule named, the release route and
the day of deletion, one register per language, whole sentences per line; loop protection,
the forwarding mailbox's owner, the rate limit and its summary."""

from __future__ import annotations

import asyncio
import html
import re
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path
from typing import Any

import pytest

from milter import config as config_mod
from milter.core.context import Envelope
from milter.core.message import parse
from milter.core.verdict import FiredRule, Verdict
from milter.directory import parse_csv
from milter.notices import (
    HeldItem,
    NoticeRequest,
    Notifier,
    RateLimiter,
    Style,
    render,
    render_outcome,
    render_summary,
    request_for,
    template_problems,
    wants_notice,
)
from milter.policy import load
from milter.runtime import Runtime
from tests.conftest import POLICY, make_message, write_config
from tests.fixtures import files

TEMPLATES = POLICY.parent / "notices"
POL = load(POLICY)
RULES = sorted(POL.rules.values(), key=lambda r: r.id)
STYLE = Style(templates=TEMPLATES, postmaster="postmaster@school.example",
              school="De Regenboog", school_domains=("school.example",))
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
# 27 November 2026, 13:21 UTC: 14:21 in Amsterdam (winter time).
WHEN = datetime(2026, 11, 27, 13, 21, tzinfo=UTC)
RULE_ID = re.compile(r"\b(?:A1|A5|B1|FWD)\.[a-z-]+")


def request(rule_id: str, action: str, evidence: dict[str, Any] | None = None,
            rcpts: tuple[str, ...] = ("ouder@example.org",), subject: str = "Rapport <Jan> & co",
            more: tuple[str, ...] = ()) -> NoticeRequest:
    fired = tuple(FiredRule(r, POL.rules[r].article, action, "enforce", "x",
                            evidence or {}) for r in (rule_id, *more))
    verdict = Verdict(action, "outbound", "", fired, "01ref")
    return NoticeRequest("01ref", verdict, "someone@school.example", rcpts, subject, "<m@s>",
                         WHEN, tuple(POL.rules[r] for r in (rule_id, *more)))


def plain(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=email_policy.default)
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr,no-any-return]


def whole_sentences(text: str) -> list[str]:
    """Lines that break a sentence: every line of the plain text is a whole paragraph, a
    heading, a label row or a list item; no line goes on on the next one."""
    bad = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        label = re.match(r"^[A-Z][a-z]+: \S", line)
        if not (line.rstrip().rstrip("”’\"").endswith((".", "?", "!", ":", ",")) or label):
            bad.append(line)
        if nxt.strip() and nxt[0].islower():
            bad.append(line + " / " + nxt)
    return bad


# -- every rule, every language, every register -------------------------------------------------

@pytest.mark.parametrize("register", ["je", "u"])
@pytest.mark.parametrize("lang", ["nl", "en"])
@pytest.mark.parametrize("rp", RULES, ids=[r.id for r in RULES])
def test_every_rule_renders_whole_and_without_jargon(rp: Any, lang: str, register: str) -> None:
    style = replace(STYLE, register_nl=register)
    subject, text, body_html = render(request(rp.id, rp.action), style, lang=lang, name="Sam",
                                      supervisor="Dana Director")
    texts = style.texts(lang)
    title = texts.rule(rp, "title")
    for part, expected_title in ((text, title), (body_html, html.escape(title))):
        assert re.search(r"\{[a-z_]+\}", part) is None  # every placeholder filled
        assert "01ref" in part and "ouder@example.org" in part
        assert expected_title in part
        assert RULE_ID.search(part) is None  # rule ids stay out of the prose
        assert "UTC" not in part and "Verstuurd" not in part and "Sent:" not in part
        assert "Dana Director" in part  # the supervisor is named
    assert texts.rule(rp, "advice") in text
    assert "Rapport <Jan> & co" in text and "Rapport &lt;Jan&gt; &amp; co" in body_html
    assert "<Jan>" not in body_html
    assert subject.startswith("[Mailcontrole]" if lang == "nl" else "[Mail check]")
    assert whole_sentences(text) == []


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-zà-ÿ]+", text.lower()))


@pytest.mark.parametrize("rp", RULES, ids=[r.id for r in RULES])
def test_one_register_per_dutch_text(rp: Any) -> None:
    for register, foreign in (("je", {"u", "uw", "twijfelt"}),
                              ("u", {"je", "jij", "jou", "jouw", "kun", "twijfel"})):
        style = replace(STYLE, register_nl=register)
        for kind in ("sender", "supervisor"):
            subject, text, _ = render(request(rp.id, rp.action), style, lang="nl", name="Sam",
                                      kind=kind, sender_name="Sam", supervisor="Dana")
            assert not words(subject + text) & foreign, (register, kind)
        items = [HeldItem("01a", WHEN.timestamp(), "X", "quarantine", (rp.id,))]
        _, text, _ = render_summary(items, style, POL, lang="nl", name="Sam", supervisor="Dana")
        assert not words(text) & foreign
        for outcome in ("released", "deleted"):
            _, text, _ = render_outcome(outcome, style, lang="nl", name="Sam", subject="X",
                                        recipients=["a@b.example"], received=WHEN, ref="r")
            assert not words(text) & foreign


def test_smtp_reasons_take_no_register_and_no_misspelt_prive() -> None:
    for rp in RULES:
        assert not words(rp.text("reason", "nl")) & {"je", "jij", "jouw", "u", "uw"}, rp.id
    for path in TEMPLATES.rglob("*"):
        if path.is_file():
            assert "prive-adres" not in path.read_text(encoding="utf-8")
            assert "prive adres" not in path.read_text(encoding="utf-8")
    _, text, _ = render(request("B1.private-address", "reject", {"staff_member": "x"}), STYLE,
                        lang="nl", name="Sam")
    assert "privéadres" in text


# -- what was found ---------------------------------------------------------------------------

def evaluate(raw: bytes, rcpts: tuple[str, ...] = ("ouder@example.org",)) -> NoticeRequest:
    rt = Runtime.from_config(config_mod.load(write_config(Path(tempfile.mkdtemp()))))
    env = Envelope("someone@school.example", rcpts, "127.0.0.1", txid="01real")
    ev = rt.evaluate(env, raw)
    req = request_for("01real", ev.verdict, rt.policy, ev.message, env.mail_from, rcpts,
                      ev.summary)
    assert req is not None
    return replace(req, received=WHEN)


def test_the_notice_names_the_file_and_the_finding_never_a_value() -> None:
    rows = files.pupil_rows(15)
    raw = files.mail_with([("leerlingenlijst groep 5.xlsx", files.xlsx(rows), XLSX),
                           ("verslag.docx", files.docx([f"BSN: {files.BSNS[0]}"],
                                                       label="Vertrouwelijk"), DOCX)],
                          subject="Lijst")
    req = evaluate(raw)
    _, text, body_html = render(req, STYLE, lang="nl", name="Sam")
    assert ("de bijlage “leerlingenlijst groep 5.xlsx” bevat 15 rijen met leerlinggegevens; "
            "de bijlage “verslag.docx” bevat een burgerservicenummer (BSN) en het "
            "label “Vertrouwelijk”.") in text
    assert "leerlingenlijst groep 5.xlsx" in body_html
    for value in (files.BSNS[0], str(rows[1][0]), str(rows[1][1]), str(rows[1][3])):
        assert value not in text and value not in body_html  # never what was found


def test_uninspectable_and_media_in_plain_words() -> None:
    raw = files.mail_with([("dossier.zip", files.encrypted_zip({"a.txt": b"x" * 100}),
                            "application/zip")])
    _, text, _ = render(evaluate(raw), STYLE, lang="nl", name="Sam")
    assert "de bijlage “dossier.zip” is een archief met een wachtwoord" in text
    raw = files.mail_with([("schoolreis.jpg", files.photo(800, 600), "image/jpeg")])
    _, text, _ = render(evaluate(raw), STYLE, lang="en", name="Sam")
    assert "the attachment “schoolreis.jpg” is a photo" in text


def test_local_time_in_words_configurable_zone() -> None:
    _, text, _ = render(request("A1.confidential-attachment", "quarantine"), STYLE, lang="nl",
                        name="S")
    assert "Tijdstip: vrijdag 27 november 2026 om 14.21 uur" in text
    summer = replace(request("A1.confidential-attachment", "quarantine"),
                     received=datetime(2026, 7, 1, 12, 5, tzinfo=UTC))
    _, text, _ = render(summer, STYLE, lang="en", name="S")
    assert "Time: Wednesday 1 July 2026 at 14:05" in text
    _, text, _ = render(summer, replace(STYLE, timezone="Europe/London"), lang="nl", name="S")
    assert "woensdag 1 juli 2026 om 13.05 uur" in text


def test_mail_to_colleagues_only_never_says_outside() -> None:
    req = request("A1.confidential-attachment", "tag", rcpts=("collega@school.example",))
    for lang, outside in (("nl", "naar buiten"), ("en", "outside")):
        subject, text, body_html = render(req, STYLE, lang=lang, name="S")
        assert outside not in (subject + text + body_html).lower()
    _, text, _ = render(req, STYLE, lang="nl", name="S")
    assert "Vertrouwelijke of persoonlijke gegevens in een bijlage" in text
    assert "Je bericht is verstuurd." in text
    _, text, _ = render(request("A1.confidential-attachment", "quarantine"), STYLE, lang="nl",
                        name="S")
    assert "Vertrouwelijke of persoonlijke gegevens naar buiten" in text
    # through the real rules: a pupil list to a colleague is tagged, and told so
    raw = files.mail_with([("lijst.xlsx", files.xlsx(files.pupil_rows(12)), XLSX)],
                          to="collega@school.example")
    real = evaluate(raw, ("collega@school.example",))
    assert real.verdict.action == "tag"
    subject, text, _ = render(real, STYLE, lang="nl", name="S")
    assert "naar buiten" not in subject + text and "in een bijlage" in text
    items = [HeldItem("01a", WHEN.timestamp(), "X", "tag", ("A1.confidential-attachment",),
                      internal=True)]
    _, text, _ = render_summary(items, STYLE, POL, lang="nl", name="S")
    assert "naar buiten" not in text and "“X” is wel verstuurd." in text


def test_every_rule_that_fired_is_named() -> None:
    req = request("A1.confidential-attachment", "quarantine",
                  more=("FWD.manual-external", "A5.media-external"))
    _, text, body_html = render(req, STYLE, lang="nl", name="S")
    for rid in ("A1.confidential-attachment", "FWD.manual-external", "A5.media-external"):
        title = STYLE.texts("nl").rule(POL.rules[rid], "title")
        assert f"- {title} (" in text and html.escape(title) in body_html


def test_a_held_message_says_when_it_is_deleted_and_how_to_ask() -> None:
    style = replace(STYLE, retention_days=14)
    _, text, body_html = render(request("A1.confidential-attachment", "quarantine"), style,
                                lang="nl", name="S")
    assert "Het bericht wordt 14 dagen bewaard." in text
    assert "op vrijdag 11 december 2026 verwijderd" in text  # 27 November + 14 days
    assert "Beantwoord dan deze e-mail, of mail naar postmaster@school.example" in text
    assert "14 dagen" in body_html and "11 december 2026" in body_html
    _, text, _ = render(request("A1.confidential-attachment", "reject"), style, lang="nl",
                        name="S")
    assert "bewaard" not in text and "verwijderd" not in text


def test_the_supervisor_reads_about_someone_else() -> None:
    subject, text, _ = render(request("A1.confidential-attachment", "quarantine"), STYLE,
                              lang="nl", name="Dana", kind="supervisor", sender_name="Sam Smit")
    assert "Melding over een bericht van Sam Smit" in subject
    assert "Een bericht van Sam Smit is tegengehouden" in text
    assert "Wat kan Sam Smit doen?" in text and "Je bericht" not in text
    assert "Sam Smit kreeg dit advies: “Deel het bestand via het documentsysteem" in text
    assert "Sam Smit kan met vragen over het protocol bij jou terecht" in text


# -- who gets a notice ----------------------------------------------------------------------

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


PEOPLE = ("address;role;name;private_addresses;supervisor;language\n"
          "sam@school.example;staff;Sam Smit;;boss@school.example;en\n"
          "boss@school.example;staff;Bea Baas;;;\n"
          "juf@school.example;staff;Juf Jansen;;boss@school.example;\n")


def notifier(tmp_path: Path, people: str = PEOPLE, audit: Any = None, **kw: Any) -> Notifier:
    return Notifier(policy=POL, style=STYLE, hostname="relay.school.example",
                    next_hop=kw.pop("next_hop", f"maildir:{tmp_path / 'maildir'}"), timeout=1,
                    limiter=kw.pop("limiter", RateLimiter(tmp_path / "n.sqlite3", 5)),
                    directory=parse_csv(people), audit=audit, **kw)


class Audit:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def append(self, event: Any) -> None:
        self.events.append(event)


def test_an_automatic_forward_is_told_to_the_owner_of_the_forwarding_mailbox(
        tmp_path: Path) -> None:
    raw = make_message(frm="Ouder <ouder@example.org>", to="juf@school.example",
                       subject="Vraag over huiswerk",
                       extra_headers="Auto-Submitted: auto-forwarded\r\nX-Forwarded-For: "
                                     "juf@school.example juf.prive@gmail.example\r\n")
    rt = Runtime.from_config(config_mod.load(write_config(tmp_path)))
    env = Envelope("juf@school.example", ("juf.prive@gmail.example",), "127.0.0.1", txid="01f")
    ev = rt.evaluate(env, raw)
    assert ev.verdict.action == "reject"
    assert not wants_notice(ev.message, env.mail_from)  # auto-submitted: no plain notice
    req = request_for("01f", ev.verdict, rt.policy, ev.message, env.mail_from, env.rcpt_tos,
                      ev.summary)
    assert req is not None
    (notice,) = notifier(tmp_path).plan(req)
    assert (notice.to, notice.kind, notice.lang) == ("juf@school.example", "forward", "nl")
    text = plain(notice.rendered)
    assert text.startswith("Beste Juf Jansen,")
    assert ("Een bericht dat in je mailbox binnenkwam, werd automatisch doorgestuurd naar "
            "juf.prive@gmail.example.") in text
    assert "Zet de doorstuurregel in je mailbox uit" in text
    # our own notice, forwarded by the same rule: refused, but never a notice (a loop)
    looped = raw.replace(b"Subject:", b"X-SKOT-Notice: 01f\r\nSubject:", 1)
    ev = rt.evaluate(env, looped)
    assert request_for("01g", ev.verdict, rt.policy, ev.message, env.mail_from, env.rcpt_tos,
                       ev.summary) is None


def test_plan_per_person_language_and_supervisor(tmp_path: Path) -> None:
    rp = replace(POL.rules["A1.confidential-attachment"], notice_supervisor=True)
    req = replace(request(rp.id, "quarantine"), mail_from="sam@school.example", rules=(rp,))
    plan = notifier(tmp_path).plan(req)
    assert [(n.to, n.kind, n.lang) for n in plan] == [
        ("sam@school.example", "sender", "en"), ("boss@school.example", "supervisor", "nl")]
    sender = message_from_bytes(plan[0].rendered, policy=email_policy.default)
    assert sender["Subject"].startswith("[Mail check] Your message was held")
    assert sender["X-SKOT-Rules"] == "A1.confidential-attachment"
    assert "Ask Bea Baas, your supervisor" in plain(plan[0].rendered)
    assert "Een bericht van Sam Smit is tegengehouden" in plain(plan[1].rendered)
    assert whole_sentences(plain(plan[0].rendered)) == []
    assert whole_sentences(plain(plan[1].rendered)) == []


def test_no_notice_to_outside_addresses(tmp_path: Path) -> None:
    req = replace(request("A1.confidential-attachment", "quarantine"),
                  mail_from="someone@gmail.example")
    assert notifier(tmp_path).plan(req) == []


# -- the rate limit: every suppressed notice on record, one summary when the hour is over ----

def test_rate_limiter_holds_and_counts(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path / "n.sqlite3", per_hour=5)
    t = 1_000_000.0
    results = [limiter.admit("Someone@school.example", now=t + i) for i in range(50)]
    assert sum(ok for ok, _ in results) == 5
    assert all(held == 0 for _, held in results)
    assert limiter.next_due(now=t + 60) == t + 3600  # when the first of the five is an hour old
    # a notice after the hour says how many were held back (and takes their summary's place)
    assert limiter.admit("someone@school.example", now=t + 3700) == (True, 45)
    assert limiter.next_due(now=t + 3700) is None
    assert limiter.admit("other@school.example", now=t + 10) == (True, 0)


def test_suppressed_notices_are_audited_and_summarised_when_the_hour_is_over(
        tmp_path: Path) -> None:
    audit = Audit()
    n = notifier(tmp_path, audit=audit,
                 limiter=RateLimiter(tmp_path / "n.sqlite3", 5, window=2.0))  # an "hour" of 2 s

    async def go() -> None:
        for i in range(10):
            n.schedule(replace(request("A1.confidential-attachment", "quarantine",
                                       subject=f"Rapport {i}"), txid=f"01tx{i}",
                               mail_from="juf@school.example"))
            await asyncio.sleep(0.01)
        await asyncio.wait_for(_until(lambda: any(
            e.evidence.get("kind") == "summary" for e in audit.events)), 10)
        await n.drain()

    asyncio.run(go())
    events = [(e.event, e.txid, e.evidence.get("kind")) for e in audit.events]
    sent = {tx for ev, tx, kind in events if ev == "notice-sent" and kind == "sender"}
    suppressed = [e for e in audit.events if e.event == "notice-suppressed"]
    held = {e.txid for e in suppressed}
    # five notices, five held back (which ones: the order the planning threads ran in)
    assert len(sent) == 5 and len(held) == 5 and sent | held == {f"01tx{i}" for i in range(10)}
    assert all(e.recipients == ("juf@school.example",) for e in suppressed)
    (summary,) = [e for e in audit.events if e.evidence.get("kind") == "summary"]
    assert summary.event == "notice-sent"
    assert set(summary.evidence["held"]) == held
    mails = sorted((tmp_path / "maildir" / "new").iterdir())
    assert len(mails) == 6
    texts = [plain(m.read_bytes()) for m in mails]
    (body,) = [t for t in texts if "Nog 5" in t or "nog 5" in t]
    assert "In het afgelopen uur zijn nog 5 berichten van je tegengehouden of geweigerd." in body
    for tx in held:
        assert f"“Rapport {tx[-1]}” is tegengehouden" in body and tx in body
    assert "Tegengehouden berichten worden 30 dagen bewaard en daarna verwijderd." in body
    assert whole_sentences(body) == []
    subjects = [message_from_bytes(m.read_bytes(), policy=email_policy.default)["Subject"]
                for m in mails]
    assert "[Mailcontrole] Nog 5 berichten tegengehouden" in subjects


async def _until(pred: Any) -> None:
    while not pred():
        await asyncio.sleep(0.05)


def test_summary_claimed_once_across_processes(tmp_path: Path) -> None:
    a = RateLimiter(tmp_path / "n.sqlite3", 1, window=100)
    b = RateLimiter(tmp_path / "n.sqlite3", 1, window=100)
    item = HeldItem("01x", 0.0, "S", "reject", ("B1.private-address",))
    assert a.admit("x@school.example", now=0)[0]
    assert not b.admit("x@school.example", now=1, item=item, addressee={"to": "x"})[0]
    assert a.claim_due(now=50) == [] and b.claim_due(now=50) == []  # hour not over
    first, second = a.claim_due(now=101), b.claim_due(now=101)
    assert len(first + second) == 1 and (first + second)[0][2] == [item]


# -- templates as data ------------------------------------------------------------------------

def test_bundled_templates_have_no_problems() -> None:
    assert template_problems(TEMPLATES, set(POL.rules), ("nl", "nl-u", "en")) == []


def test_template_problems_found(tmp_path: Path) -> None:
    (tmp_path / "nl").mkdir()
    (tmp_path / "nl" / "notice.txt").write_text("Hoi {naam}, {subject} {recipients} {ref}")
    (tmp_path / "nl" / "notice.html").write_text("{subject} {ref} {advice} {recipients}")
    (tmp_path / "nl" / "texts.toml").write_text("[words]\nand = 'en'\n")
    problems = "\n".join(template_problems(tmp_path))
    assert "unknown placeholder(s) {naam}" in problems
    assert "missing placeholder(s) {advice}" in problems
    assert "en/notice.txt: missing" in problems and "nl/summary.txt: missing" in problems
    assert "texts.toml: words.days missing" in problems
    assert "texts.toml: [findings] missing" in problems


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
    style = replace(STYLE, templates=templates)
    a1 = POL.rules["A1.confidential-attachment"]
    _, text, body_html = render(request(a1.id, "quarantine"), style, lang="nl", name="S")
    assert text.startswith("Eigen tekst van de school over "
                           + style.texts("nl").rule(a1, "title"))
    assert body_html.startswith("<p>Eigen tekst: Rapport &lt;Jan&gt; &amp; co")
    _, text, _ = render(request("B1.sender-domain", "reject"), style, lang="nl", name="S")
    assert "Eigen tekst" not in text and text.startswith("Beste S,")
    _, text, _ = render(request(a1.id, "quarantine"), style, lang="en", name="S")
    assert "Eigen tekst" not in text  # the English notice keeps the default
    assert template_problems(templates, set(POL.rules)) == []


def test_a_school_rewords_a_sentence_in_the_texts_file(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    path = templates / "nl" / "texts.toml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        'reject = "Je bericht is geweigerd en niet verstuurd."',
        'reject = "Dit bericht is niet verstuurd."'), encoding="utf-8")
    _, text, _ = render(request("B1.sender-domain", "reject"),
                        replace(STYLE, templates=templates), lang="nl", name="S")
    assert "Dit bericht is niet verstuurd." in text


def test_overrides_that_would_never_be_used_are_reported(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    body = "{subject} {recipients} {advice} {ref}"
    (templates / "nl" / "A1.confidentail-attachment.txt").write_text(body)  # typo in the id
    (templates / "nl" / "A1.confidentail-attachment.html").write_text(body)
    (templates / "en" / "B1.sender-domain.txt").write_text(body)  # html part forgotten
    problems = "\n".join(template_problems(templates, set(POL.rules)))
    assert "override for unknown rule 'A1.confidentail-attachment'" in problems
    assert "B1.sender-domain.txt: override without B1.sender-domain.html" in problems
    assert len(template_problems(templates, set(POL.rules))) == 2


# -- the preview ------------------------------------------------------------------------------

def test_cli_preview_shows_every_variant(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from milter.cli import main

    cfg = write_config(tmp_path)
    assert main(["notice", "preview", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    labels = re.findall(r"^===== (.*?) =+$", out, re.M)
    for lang in ("nl", "en"):
        for rp in RULES:
            assert f"{rp.id}, to outside, {lang}, " + (
                "forward" if rp.id == "FWD.auto-external" else "sender") in labels \
                or f"{rp.id}, to colleagues only, {lang}, sender" in labels
            assert any(x.startswith(f"{rp.id},") and x.endswith(f"{lang}, supervisor")
                       for x in labels)
        assert f"A1.confidential-attachment, to colleagues only, {lang}, sender" in labels
        for kind in ("summary", "released", "deleted"):
            assert f"{kind}, {lang}" in labels
    assert re.search(r"\{[a-z_]+\}", out) is None
    assert "Nog 5 berichten tegengehouden" in out and "alsnog verstuurd" in out

    assert main(["notice", "preview", "A1.confidential-attachment", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Subject: [Mailcontrole] Je bericht is tegengehouden")
    assert "leerlingenlijst groep 5.xlsx" in out and "30 dagen bewaard" in out
    assert main(["notice", "preview", "A1.confidential-attachment", "--lang", "en", "--html",
                 "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "<html" in out and "Confidential or personal data sent outside" in out
    assert main(["notice", "preview", "Z9.nope", "--config", str(cfg)]) == 2
    assert "no rule Z9.nope" in capsys.readouterr().err

    assert main(["notice", "preview", "--kind", "summary", "--register", "u",
                 "--config", str(cfg)]) == 0
    assert "nog 5 berichten van u tegengehouden" in capsys.readouterr().out
    cfg.write_text(cfg.read_text() + '\n[notices]\nregister_nl = "u"\n')
    assert main(["notice", "preview", "A1.confidential-attachment", "--config", str(cfg)]) == 0
    assert "Uw bericht is tegengehouden" in capsys.readouterr().out

    templates = copy_templates(tmp_path)
    (templates / "en" / "notice.txt").write_text("Hi {nmae}, {subject} {recipients} {ref}")
    cfg.write_text(cfg.read_text() + f'templates = "{templates}"\n')
    assert main(["config", "check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "en/notice.txt: unknown placeholder(s) {nmae}" in err
    assert "en/notice.txt: missing placeholder(s) {advice}" in err


# -- failures leave a trace -----------------------------------------------------------------------

def test_a_notice_that_cannot_be_built_is_audited(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "nl" / "notice.txt").write_text("{subject} {recipients} {advice} {ref} {")
    audit = Audit()
    n = notifier(tmp_path, audit=audit)
    n.style = replace(STYLE, templates=templates)

    async def go() -> None:
        n.schedule(replace(request("A1.confidential-attachment", "quarantine"),
                           mail_from="juf@school.example"))
        await n.drain()

    asyncio.run(go())
    (event,) = audit.events
    assert event.event == "notice-failed"
    assert "could not be built" in event.reply


def test_stop_does_not_hang_on_a_notice_being_retried(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    audit = Audit()
    n = notifier(tmp_path, audit=audit, next_hop=f"smtp://127.0.0.1:{port}", retries=5,
                 retry_delay=60)
    rp = replace(POL.rules["A1.confidential-attachment"], notice_supervisor=True)

    async def go() -> None:
        n.schedule(replace(request(rp.id, "quarantine"), mail_from="sam@school.example",
                           rules=(rp,)))
        await asyncio.wait_for(n.drain(timeout=1.0), timeout=10)

    asyncio.run(go())
    assert n.tasks == set()
    events = sorted((e.event, e.recipients, e.reply) for e in audit.events)
    assert [(ev, to) for ev, to, _ in events] == [
        ("notice-failed", ("boss@school.example",)), ("notice-failed", ("sam@school.example",))]
    assert all("gateway stopped" in reply for _, _, reply in events)


def test_supervisor_notices_are_rate_limited_too(tmp_path: Path) -> None:
    n = notifier(tmp_path)
    rp = replace(POL.rules["A1.confidential-attachment"], notice_supervisor=True)
    req = replace(request(rp.id, "quarantine"), mail_from="sam@school.example", rules=(rp,))
    plans = [n.plan(req) for _ in range(8)]
    to_boss = [x for plan in plans for x in plan if x.kind == "supervisor"]
    assert [x.suppressed for x in to_boss] == [False] * 5 + [True] * 3
    n.limiter._db.execute("UPDATE sent SET ts = ts - 3700")
    (_, boss) = n.plan(req)
    assert "3 more messages" not in plain(boss.rendered)  # Bea reads Dutch
    assert "nog 3 berichten" in plain(boss.rendered)


def test_summaries_held_before_a_restart_are_sent_after_it(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path / "n.sqlite3", 1, window=0.2)
    item = HeldItem("01old", 0.0, "Oud bericht", "reject", ("B1.private-address",))
    assert limiter.admit("supervisor:boss@school.example", now=0.0)[0]
    assert not limiter.admit("supervisor:boss@school.example", now=0.1, item=item, addressee={
        "to": "boss@school.example", "lang": "nl", "name": "Bea Baas", "kind": "supervisor"})[0]
    audit = Audit()
    n = notifier(tmp_path, audit=audit, limiter=RateLimiter(tmp_path / "n.sqlite3", 1,
                                                            window=0.2))

    async def go() -> None:  # a new process: only the database knows what was held
        n.start()
        await asyncio.wait_for(_until(lambda: audit.events), 10)
        await n.drain()

    asyncio.run(go())
    (event,) = audit.events
    assert (event.event, event.recipients, event.evidence["held"]) == (
        "notice-sent", ("boss@school.example",), ["01old"])
    (mail,) = (tmp_path / "maildir" / "new").iterdir()
    text = plain(mail.read_bytes())
    assert text.startswith("Beste Bea Baas,")
    assert ("In het afgelopen uur is nog 1 bericht tegengehouden of geweigerd van iemand van "
            "wie je leidinggevende bent.") in text
    assert "“Oud bericht” is geweigerd. Reden: Schoolmail vanaf een privéadres." in text


def test_a_summary_that_cannot_be_built_leaves_a_trace(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "nl" / "summary.txt").write_text("{summary_intro} {held_text} {")
    limiter = RateLimiter(tmp_path / "n.sqlite3", 1, window=0.2)
    item = HeldItem("01lost", 0.0, "X", "reject", ("B1.private-address",))
    assert limiter.admit("juf@school.example", now=0.0)[0]
    assert not limiter.admit("juf@school.example", now=0.1, item=item, addressee={
        "to": "juf@school.example", "lang": "nl", "name": "Juf", "kind": "sender"})[0]
    audit = Audit()
    n = notifier(tmp_path, audit=audit, limiter=limiter)
    n.style = replace(STYLE, templates=templates)

    async def go() -> None:
        n.start()
        await asyncio.wait_for(_until(lambda: audit.events), 10)
        await n.drain()

    asyncio.run(go())
    (event,) = audit.events
    assert event.event == "notice-failed" and event.evidence["held"] == ["01lost"]
    assert "could not be built" in event.reply


def test_the_notice_says_a_record_was_kept_and_for_how_long() -> None:
    """Issue 23: the teacher learns that the audit keeps a record, and for how long."""
    style = Style(templates=TEMPLATES, postmaster="postmaster@school.example",
                  record_days=730)
    _, text, body_html = render(request("A1.confidential-attachment", "quarantine"), style,
                                lang="nl", name="S")
    assert ("Hiervan is een registratie gemaakt in het logboek van de mailcontrole. Die "
            "registratie blijft 730 dagen staan") in text
    assert "730 dagen" in body_html
    forever = Style(templates=TEMPLATES, postmaster="postmaster@school.example", record_days=0)
    _, text, _ = render(request("B1.private-address", "reject"), forever, lang="en", name="S")
    assert "A record of this was kept in the mail check's log." in text
    assert "days" not in text.split("A record of this")[1].split("\n")[0]


def test_the_release_link_is_a_link_in_html_and_the_reason_stays_text() -> None:
    """With web.public_url the notice offers the link beside the reply address (a real link
    in the HTML part); the sender's own words in the supervisor's copy are never markup."""
    from dataclasses import replace

    link = "https://mailcontrole.school.example/vrijgeven/" + "T" * 24
    req = replace(request("A1.confidential-attachment", "quarantine"),
                  release_address="vrijgeven+" + "T" * 24 + "@school.example",
                  release_link=link)
    _, text, body_html = render(req, STYLE, lang="nl", name="Sam")
    assert f"of open {link}, meld je aan" in text and "vrijgeven+TTTT" in text
    assert f'<a href="{link}">{link}</a>' in body_html
    _, text, body_html = render(replace(req, release_link=""), STYLE, lang="nl", name="Sam")
    assert "/vrijgeven/" not in text and "<a href" not in body_html  # reply only
    copy = replace(req, release_address="", release_link="",
                   intro='Sam gaf vrij: "<b>moest</b> \x00link\x00"')
    _, text, body_html = render(copy, STYLE, lang="nl", name="Dana", kind="supervisor",
                                sender_name="Sam")
    assert "&lt;b&gt;moest&lt;/b&gt;" in body_html and "<a href" not in body_html
