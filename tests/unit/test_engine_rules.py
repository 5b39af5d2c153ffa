"""B1 rules, the engine's combination of actions, and monitor mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from milter.core.context import Envelope
from milter.runtime import Runtime
from tests.conftest import make_message, write_config


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    return Runtime.load(str(write_config(tmp_path)))


def verdict(rt: Runtime, raw: bytes, mail_from: str = "someone@school.example",
            rcpts: tuple[str, ...] = ("x@ext.example",), ip: str = "127.0.0.1",
            auth: str = "") -> dict:  # type: ignore[type-arg]
    env = Envelope(mail_from, rcpts, ip, auth_user=auth, txid="T1")
    return rt.evaluate(env, raw).verdict.to_json()


def fired(v: dict) -> list[str]:  # type: ignore[type-arg]
    return [r["id"] for r in v["rules"]]


def test_clean_outbound_is_accepted(rt: Runtime) -> None:
    v = verdict(rt, make_message())
    assert v["action"] == "accept" and v["rules"] == [] and v["direction"] == "outbound"


def test_subdomain_of_school_counts_as_school(rt: Runtime) -> None:
    raw = make_message(frm="pupil1@leerling.school.example")
    assert verdict(rt, raw, mail_from="pupil1@leerling.school.example")["action"] == "accept"


@pytest.mark.parametrize("frm,mail_from,problem", [
    ("me@gmail.example", "someone@school.example", "from-external"),
    ("someone@school.example", "me@gmail.example", "envelope-sender-external"),
    ("someone@school.example.evil.example", "someone@school.example", "from-external"),
    ("someone@notschool.example", "someone@school.example", "from-external"),
    ("a@school.example, b@gmail.example", "a@school.example", "several-from-addresses"),
    ("", "someone@school.example", "no-from"),
])
def test_sender_domain_violations(rt: Runtime, frm: str, mail_from: str, problem: str) -> None:
    v = verdict(rt, make_message(frm=frm), mail_from=mail_from)
    assert v["action"] == "reject"
    assert fired(v) == ["B1.sender-domain"]
    assert problem in v["rules"][0]["evidence"]["problems"]
    assert v["smtp_reply"].startswith("550 5.7.1 [B1.sender-domain] B1: ")
    assert "ref=T1" in v["smtp_reply"]


def test_two_from_fields_rejected(rt: Runtime) -> None:
    raw = make_message(extra_headers="From: other@school.example\r\n")
    v = verdict(rt, raw)
    assert v["action"] == "reject"
    assert "several-from-fields" in v["rules"][0]["evidence"]["problems"]


def test_mailsploit_from_is_invalid(rt: Runtime) -> None:
    raw = make_message(frm="=?utf-8?b?cG90dXNAd2hpdGVob3VzZS5nb3YAKG51bGwp?= <me@gmail.example>")
    v = verdict(rt, raw)
    assert v["action"] == "reject"


def test_null_sender_bounce_judged_by_from_only(rt: Runtime) -> None:
    raw = make_message(frm="MAILER-DAEMON@school.example")
    assert verdict(rt, raw, mail_from="")["action"] == "accept"


def test_inbound_external_sender_is_not_b1(rt: Runtime) -> None:
    raw = make_message(frm="parent@home.example", to="someone@school.example")
    v = verdict(rt, raw, mail_from="parent@home.example", rcpts=("someone@school.example",),
                ip="203.0.113.5")
    assert v["direction"] == "inbound" and v["action"] == "accept"


def test_auth_identity_own_address_passes(rt: Runtime) -> None:
    raw = make_message(frm="teacher@school.example")
    v = verdict(rt, raw, mail_from="teacher@school.example", ip="203.0.113.5", auth="teacher")
    assert v["action"] == "accept" and v["direction"] == "outbound"


def test_auth_identity_sending_as_colleague_rejected(rt: Runtime) -> None:
    raw = make_message(frm="director@school.example")
    v = verdict(rt, raw, mail_from="director@school.example", ip="203.0.113.5",
                auth="teacher@school.example")
    assert v["action"] == "reject"
    assert fired(v) == ["B1.auth-identity"]
    assert v["rules"][0]["evidence"]["mismatched"] == ["envelope", "from"]


def test_private_address_to_pupil_rejected(rt: Runtime) -> None:
    raw = make_message(frm="Theo <theo@home.example>", to="pupil1@leerling.school.example")
    v = verdict(rt, raw, mail_from="theo@home.example",
                rcpts=("pupil1@leerling.school.example",), ip="198.51.100.7")
    assert v["action"] == "reject" and fired(v) == ["B1.private-address"]
    assert v["rules"][0]["evidence"]["staff_member"] == "teacher@school.example"
    # the private address itself is not repeated in the evidence
    assert "theo@home.example" not in str(v["rules"][0]["evidence"])


def test_private_address_to_external_only_passes(rt: Runtime) -> None:
    raw = make_message(frm="theo@home.example", to="friend@else.example")
    v = verdict(rt, raw, mail_from="theo@home.example", rcpts=("friend@else.example",),
                ip="198.51.100.7")
    assert v["action"] == "accept"


def test_unknown_private_lookalike_passes(rt: Runtime) -> None:
    raw = make_message(frm="theo@home2.example", to="someone@school.example")
    v = verdict(rt, raw, mail_from="theo@home2.example", rcpts=("someone@school.example",),
                ip="198.51.100.7")
    assert v["action"] == "accept"


def test_monitor_mode_lists_rule_without_raising_action(rt: Runtime) -> None:
    rules = dict(rt.policy.rules)
    rules["B1.sender-domain"] = replace(rules["B1.sender-domain"], mode="monitor")
    monitored = replace(rt, engine=replace(rt.engine, policy=replace(rt.policy, rules=rules)))
    v = verdict(monitored, make_message(frm="me@gmail.example"), mail_from="me@gmail.example")
    assert v["action"] == "accept"
    assert v["rules"][0]["id"] == "B1.sender-domain" and v["rules"][0]["mode"] == "monitor"
    assert v["smtp_reply"].startswith("250")


def test_strongest_action_wins(rt: Runtime) -> None:
    rules = dict(rt.policy.rules)
    rules["B1.sender-domain"] = replace(rules["B1.sender-domain"], action="tag")
    tagged = replace(rt, engine=replace(rt.engine, policy=replace(rt.policy, rules=rules)))
    # sender-domain (tag) and auth-identity (reject) both fire: reject wins, both are named
    raw = make_message(frm="me@gmail.example")
    v = verdict(tagged, raw, mail_from="me@gmail.example", ip="203.0.113.9", auth="teacher")
    assert v["action"] == "reject"
    assert sorted(fired(v)) == ["B1.auth-identity", "B1.sender-domain"]
    assert "[B1.auth-identity, B1.sender-domain]" in v["smtp_reply"]
    reasons = [rt.policy.rules[r].text("reason", lang) for r in ("B1.auth-identity",
                                                                  "B1.sender-domain")
               for lang in ("nl", "en")]
    assert all(reason in v["smtp_reply"] for reason in reasons)


def test_every_rule_named_and_the_ref_kept_when_reasons_do_not_fit(rt: Runtime) -> None:
    from milter.core.context import Context, Envelope
    from milter.core.engine import combine
    from milter.core.verdict import FiredRule

    rules = [replace(rp, texts={**rp.texts, "reason_nl": "x" * 200, "reason_en": "y" * 200})
             for rp in sorted(rt.policy.rules.values(), key=lambda r: r.id)]
    ctx = Context(Envelope("a@school.example", ("b@x.example",), txid="01reftail"),
                  ("school.example",))
    fired = [(rp, FiredRule(rp.id, rp.article, "reject", "enforce", "r")) for rp in rules]
    reply = combine(fired, ctx).smtp_reply
    assert len(reply) <= 510 and reply.endswith("ref=01reftail")
    assert all(rp.id in reply for rp in rules)


def test_reply_is_one_ascii_line_under_limit(rt: Runtime) -> None:
    v = verdict(rt, make_message(frm="me@gmail.example"), mail_from="me@gmail.example")
    reply = v["smtp_reply"]
    assert "\r" not in reply and "\n" not in reply and reply.isascii() and len(reply) <= 510
    assert "B1" in reply and "/" in reply  # Dutch first, then English
