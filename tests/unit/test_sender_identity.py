"""Issue 15 in the core: B1.sender-headers, B1.lookalike-sender, the recipient's warning,
name normalisation, and ``check`` with SPF/DKIM/DMARC."""

from __future__ import annotations

import base64
import email
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from email.message import Message as StdMessage
from pathlib import Path
from typing import Any

import pytest

from milter.cli import main
from milter.core.context import Envelope
from milter.core.message import parse
from milter.directory import name_words
from milter.runtime import Evaluation, Runtime, engine_for
from milter.warning import add_banner, delivered, prefix_subject
from tests.conftest import make_message, write_config
from tests.dnsserver import DNSServer, running
from tests.fixtures.sender import BANNER_MARK, CASES, OUTSIDE_IP, Case, enforce_policy, write_staff


def runtime(tmp_path: Path, enforce: bool = True, warning: str = "banner") -> Runtime:
    policy = enforce_policy(tmp_path, warning) if enforce else None
    cfg = write_config(tmp_path, **({"policy": policy} if policy else {}))
    write_staff(tmp_path)
    return Runtime.load(str(cfg))


def evaluate(rt: Runtime, case: Case) -> Evaluation:
    env = Envelope(case.mail_from, case.rcpts, case.client_ip, helo="mx.example",
                   auth_user=case.auth, txid="T15")
    return rt.evaluate(env, case.raw)


def text_parts(raw: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(raw)
    out: dict[str, str] = {}
    for part in msg.walk():
        if isinstance(part, StdMessage) and not part.is_multipart():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out.setdefault(part.get_content_type(), payload.decode(
                part.get_content_charset() or "ascii"))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sender_identity_cases(tmp_path: Path, case: Case) -> None:
    ev = evaluate(runtime(tmp_path), case)
    v = ev.verdict.to_json()
    new_rules = [r for r in v["rules"] if r["id"] in ("B1.sender-headers",
                                                      "B1.lookalike-sender")]
    assert v["action"] == case.action, v
    if case.rule is None:
        assert new_rules == []
        return
    (r,) = new_rules
    assert r["id"] == case.rule and r["mode"] == "enforce"
    key, value = case.evidence or ("", "")
    assert value in r["evidence"][key]
    if case.action == "reject":
        assert v["smtp_reply"].startswith(f"550 5.7.1 [{case.rule}] B1: ")


def test_private_address_evidence_names_the_staff_member(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "reply-to-own-private")
    (r,) = evaluate(runtime(tmp_path), case).verdict.rules
    assert r.evidence["staff_member"] == ["teacher@school.example"]
    assert r.evidence["headers"] == {"reply-to": ["home.example"]}
    assert r.evidence["auth_user"] == "teacher@school.example"


def test_declared_private_address_is_b1_private_address_not_lookalike(tmp_path: Path) -> None:
    raw = make_message(frm='"Theo Teacher" <theo@home.example>',
                       to="pupil1@leerling.school.example")
    env = Envelope("theo@home.example", ("pupil1@leerling.school.example",), OUTSIDE_IP)
    v = runtime(tmp_path).evaluate(env, raw).verdict
    assert [r.id for r in v.rules] == ["B1.private-address"] and v.action == "reject"


def test_unlisted_private_address_to_pupil_says_so(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "unlisted-private-address-to-pupil")
    (r,) = evaluate(runtime(tmp_path), case).verdict.rules
    assert r.evidence["staff_member"] == ["j.devries@school.example"]
    assert r.evidence["unlisted_private_address"] is True
    assert r.evidence["recipient_roles"] == ["pupil"]


def test_newsletter_reply_to_fires_without_the_allow_list(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    case = next(c for c in CASES if c.name == "newsletter-service-reply-to")
    rules = dict(rt.policy.rules)
    rp = rules["B1.sender-headers"]
    rules["B1.sender-headers"] = replace(rp, params={**rp.params, "allowed": []})
    bare = replace(rt, policy=replace(rt.policy, rules=rules))
    bare = replace(bare, engine=engine_for(bare.policy))
    (r,) = evaluate(bare, case).verdict.rules
    assert r.evidence["problems"] == ["reply-to-external"]


@pytest.mark.parametrize("action,expected", [("tag", "tag"), ("accept", "accept")])
def test_per_header_action_is_a_policy_param(tmp_path: Path, action: str,
                                             expected: str) -> None:
    policy = enforce_policy(tmp_path)
    policy.write_text(policy.read_text().replace('reply_to_action = "reject"',
                                                 f'reply_to_action = "{action}"'))
    rt = Runtime.load(str(write_config(tmp_path, policy=policy)))
    case = next(c for c in CASES if c.name == "reply-to-gmail")
    assert evaluate(rt, case).verdict.action == expected


def test_bad_header_action_is_a_config_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    policy = enforce_policy(tmp_path)
    policy.write_text(policy.read_text().replace('sender_action = "reject"',
                                                 'sender_action = "bounce"'))
    cfg = write_config(tmp_path, policy=policy)
    assert main(["config", "check", "--config", str(cfg)]) == 1
    out = capsys.readouterr()
    assert "1 problem(s) found" in out.err
    assert ('rules."B1.sender-headers".params.sender_action: expected one of "accept", "tag", '
            '"quarantine", "reject", got \'bounce\'') in out.err


def test_shipped_policy_runs_the_new_rules_in_monitor_mode(tmp_path: Path) -> None:
    rt = runtime(tmp_path, enforce=False)
    for name in ("reply-to-own-private", "display-name-school-address"):
        case = next(c for c in CASES if c.name == name)
        ev = evaluate(rt, case)
        assert ev.verdict.action == "accept"
        assert [(r.id, r.mode) for r in ev.verdict.rules] == [(case.rule, "monitor")]
        assert delivered(ev.raw, ev.message, ev.verdict, rt.policy) == case.raw  # untouched


@pytest.mark.parametrize("name,words", [
    ("Anouk Mulder", ("anouk", "mulder")),
    ("Mulder, Anouk", ("anouk", "mulder")),
    ("MÜLDER,  anouk", ("anouk", "mulder")),
    ("Vries, Jan de", ("jan", "de", "vries")),
    ("de Vries, Jan", ("jan", "de", "vries")),
    ("Mulder, Anouk (SKOT)", ("anouk", "mulder", "skot")),
    ("\u0410nouk Mulder", ("anouk", "mulder")),  # a Cyrillic capital A
])
def test_name_words(name: str, words: tuple[str, ...]) -> None:
    assert name_words(name) == words


# -- the warning the recipient sees -----------------------------------------------------

def lookalike(tmp_path: Path, raw: bytes, warning: str = "banner") -> tuple[Evaluation, bytes]:
    rt = runtime(tmp_path, warning=warning)
    env = Envelope("evil@attacker.example", ("teacher@school.example",), OUTSIDE_IP)
    ev = rt.evaluate(env, raw)
    assert ev.verdict.action == "tag"
    return ev, delivered(ev.raw, ev.message, ev.verdict, rt.policy)


FROM = '"directeur@school.example" <evil@attacker.example>'


def test_banner_in_plain_text(tmp_path: Path) -> None:
    _, out = lookalike(tmp_path, make_message(frm=FROM, body="Beste collega,\r\n"))
    body = text_parts(out)["text/plain"]
    assert body.startswith(BANNER_MARK) and body.endswith("Beste collega,\r\n")
    assert email.message_from_bytes(out)["Subject"] == "Hallo"


def test_banner_in_both_alternatives_keeps_encodings(tmp_path: Path) -> None:
    html = base64.encodebytes("<html><body>Klik hier: café</body></html>".encode()).replace(
        b"\n", b"\r\n")
    raw = (f"From: {FROM}\r\nTo: teacher@school.example\r\nSubject: Factuur\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n"
           "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "Content-Transfer-Encoding: quoted-printable\r\n\r\nKlik hier: caf=C3=A9\r\n"
           "--b1\r\nContent-Type: text/html; charset=utf-8\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n").encode() + html + b"--b1--\r\n"
    _, out = lookalike(tmp_path, raw)
    parts = text_parts(out)
    assert parts["text/plain"].startswith(BANNER_MARK)
    assert parts["text/plain"].endswith("Klik hier: café")  # its CRLF is the delimiter's
    assert parts["text/html"].startswith("<html><body><div ")
    assert BANNER_MARK in parts["text/html"] and parts["text/html"].endswith(
        "Klik hier: café</body></html>")
    assert not parse(out).defects
    head = out.partition(b"\r\n\r\n")[0]
    assert head == raw.partition(b"\r\n\r\n")[0]  # only bodies changed


def test_attachment_only_message_gets_the_subject_prefix(tmp_path: Path) -> None:
    raw = (f"From: {FROM}\r\nTo: teacher@school.example\r\nSubject: Scan\r\n"
           "MIME-Version: 1.0\r\nContent-Type: application/pdf\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n").encode()
    _, out = lookalike(tmp_path, raw)
    assert email.message_from_bytes(out)["Subject"] == "[Let op: externe afzender] Scan"
    assert out.partition(b"\r\n\r\n")[2] == raw.partition(b"\r\n\r\n")[2]


def test_subject_warning_configured(tmp_path: Path) -> None:
    _, out = lookalike(tmp_path, make_message(frm=FROM, subject="Re: [Let op: externe "
                                              "afzender] Hallo"), warning="subject")
    # a reply keeps one prefix; the body is untouched
    assert email.message_from_bytes(out)["Subject"] == "Re: [Let op: externe afzender] Hallo"
    _, out = lookalike(tmp_path, make_message(frm=FROM), warning="subject")
    assert email.message_from_bytes(out)["Subject"] == "[Let op: externe afzender] Hallo"
    assert text_parts(out)["text/plain"] == "Goedemorgen.\r\n"


def test_no_warning_configured_leaves_the_message(tmp_path: Path) -> None:
    raw = make_message(frm=FROM)
    _, out = lookalike(tmp_path, raw, warning="none")
    assert out == raw


def test_ambiguous_mime_gets_the_subject_prefix_not_a_spliced_banner() -> None:
    raw = (b"Subject: x\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n"
           b"Content-Type: text/plain\r\n\r\nno closing delimiter\r\n")
    assert add_banner(raw, "Let op") is None
    assert prefix_subject(raw, "[Let op]").startswith(b"Subject: [Let op] x\r\n")


def test_seven_bit_part_gets_an_ascii_banner() -> None:
    raw = b"Subject: x\r\nContent-Type: text/plain\r\n\r\nHoi\r\n"
    out = add_banner(raw, "Let op: afzender van buiten, niet de école")
    assert out is not None
    assert out.endswith(b"\r\n\r\nLet op: afzender van buiten, niet de ecole\r\n\r\nHoi\r\n")


# -- check: the same SPF/DKIM/DMARC as serve ---------------------------------------------

@pytest.fixture
def dnsd() -> Iterator[DNSServer]:
    with running() as server:
        server.txt("school.example", "v=spf1 ip4:192.0.2.0/24 -all")
        server.txt("_dmarc.school.example", "v=DMARC1; p=reject")
        yield server


def check_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["check", "--json", *args]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_check_authenticates_like_serve(tmp_path: Path, dnsd: DNSServer,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, dns=f'nameservers = ["127.0.0.1"]\nport = {dnsd.port}\n'
                                     'timeout = 0.5')
    eml = tmp_path / "spoof.eml"
    eml.write_bytes(make_message(frm="directie@school.example", to="teacher@school.example"))
    args = ["--config", str(cfg), "--client-ip", OUTSIDE_IP, "--helo", "mx.attacker.example",
            str(eml)]
    v = check_json(args, capsys)
    assert v["action"] == "reject" and v["rules"][0]["id"] == "B1.spoofed-school-domain"
    assert v["authentication"]["checked"] is True
    assert "spf=fail" in v["authentication"]["results"]
    assert ("_dmarc.school.example", "TXT") in dnsd.queries
    asked = len(dnsd.queries)
    skipped = check_json(["--no-dns", *args], capsys)
    assert skipped["action"] == "accept"
    assert skipped["authentication"] == {"checked": False, "skipped": "--no-dns"}
    assert len(dnsd.queries) == asked  # no look-up at all
    assert main(["check", "--no-dns", *args]) == 0
    assert "skipped: --no-dns" in capsys.readouterr().out


def test_check_says_when_the_config_turns_dns_off(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)  # the tests' default: authenticate = false
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message(frm="directie@school.example", to="teacher@school.example"))
    v = check_json(["--config", str(cfg), "--client-ip", OUTSIDE_IP, str(eml)], capsys)
    assert v["authentication"] == {"checked": False, "skipped": "[dns] authenticate = false"}


# -- ordinary mail stays unmarked (bench/sender_eval.py, a smaller sample) ----------------

def sender_eval() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "sender_eval.py"
    spec = importlib.util.spec_from_file_location("sender_eval", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sender_eval"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_ordinary_mail_sample_is_not_marked(tmp_path: Path) -> None:
    ev = sender_eval()
    staff_csv, samples = ev.ordinary(seed=7, count=600)
    assert len({s.kind for s in samples}) >= 12  # every kind of ordinary mail is in it
    rt = ev.runtime_for(tmp_path, staff_csv)
    assert [(s.kind, [r.id for r in f]) for s, f in ev.marked(rt, samples)] == []
    # the same runner does see an impostor: an outside sender with a teacher's full name
    school = ev.School(ev.random.Random(7))
    impostors = [ev._i_homonym(school, ev.random.Random(i)) for i in range(5)]
    assert len(ev.marked(rt, impostors)) == 5


def test_raw_utf8_names_and_addresses_are_usable_in_reply_to(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    raw = ("From: Renée Teacher <teacher@school.example>\r\nTo: ouder@example.org\r\n"
           "Subject: Hallo\r\nReply-To: \"Renée Teacher\" <teacher@school.example>, "
           "administratie@school.example\r\n\r\nHoi\r\n").encode()
    env = Envelope("teacher@school.example", ("ouder@example.org",), "127.0.0.1",
                   auth_user="teacher")
    # (B1.sender-domain refuses the raw UTF-8 From: itself: "invalid-from", not judged here)
    assert sender_headers(rt.evaluate(env, raw)) == []
    private = raw.replace(b"administratie@school.example", "théo@home.example".encode())
    (r,) = sender_headers(rt.evaluate(env, private))
    assert r.evidence["problems"] == ["reply-to-external"]


def sender_headers(ev: Evaluation) -> list[Any]:
    return [r for r in ev.verdict.rules if r.id == "B1.sender-headers"]


def test_subject_prefix_drops_nul_and_unfolds() -> None:
    raw = b"From: a@b.example\r\nSubject: Hal\x00lo\r\n\tdaar\r\nTo: c@d.example\r\n\r\nHoi\r\n"
    out = prefix_subject(raw, "[Let op]")
    assert out == (b"From: a@b.example\r\nSubject: [Let op] Hallo\tdaar\r\n"
                   b"To: c@d.example\r\n\r\nHoi\r\n")


def test_example_config_ships_the_new_rules_in_monitor_mode(tmp_path: Path) -> None:
    from tests.conftest import POLICY, ROOT

    text = (ROOT / "deploy" / "example" / "skot-milter.toml").read_text()
    text = text.replace("/var/lib/skot-milter", str(tmp_path / "state"))
    (tmp_path / "skot-milter.toml").write_text(text)
    # the site policy `skot-milter init` writes: the bundled one, as it is
    (tmp_path / "policy.toml").write_text('[policy]\nextends = "skot"\n')
    (tmp_path / "notices").symlink_to(POLICY.parent / "notices")
    (tmp_path / "staff.csv").write_text((ROOT / "deploy" / "example" / "staff.csv").read_text())
    rt = Runtime.load(str(tmp_path / "skot-milter.toml"))
    assert {rid: rt.policy.rules[rid].mode for rid in ("B1.sender-headers",
                                                       "B1.lookalike-sender")} == {
        "B1.sender-headers": "monitor", "B1.lookalike-sender": "monitor"}


@pytest.mark.parametrize("html,expected", [
    (b"<!DOCTYPE html><html><head><title>x</title></head><p>Hoi</p></html>",
     b"<!DOCTYPE html><html><head><title>x</title></head><div "),
    (b"<!doctype html>\r\n<p>Hoi</p>", b"<!doctype html><div "),
    (b"<p>Hoi</p>", b"<div "),
])
def test_html_banner_never_before_the_doctype(html: bytes, expected: bytes) -> None:
    raw = b"Subject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html
    out = add_banner(raw, "Let op")
    assert out is not None
    body = out.partition(b"\r\n\r\n")[2]
    assert body.replace(b"\r\n", b"").startswith(expected) and b">Let op</div>" in body


def test_reply_to_the_from_address_is_left_to_auth_identity(tmp_path: Path) -> None:
    """A shared box's message (From: the box) may name the box as Reply-To; whether the
    login may send as the box at all is B1.auth-identity's verdict, not a second one."""
    rt = runtime(tmp_path)
    raw = make_message(frm="Administratie <administratie@school.example>",
                       extra_headers="Reply-To: administratie@school.example\r\n"
                                     "Sender: teacher@school.example\r\n")
    env = Envelope("administratie@school.example", ("ouder@example.org",), "127.0.0.1",
                   auth_user="teacher")
    assert [r.id for r in rt.evaluate(env, raw).verdict.rules] == ["B1.auth-identity"]
    colleague = raw.replace(b"Reply-To: administratie@", b"Reply-To: director@")
    assert sorted(r.id for r in rt.evaluate(env, colleague).verdict.rules) == [
        "B1.auth-identity", "B1.sender-headers"]
