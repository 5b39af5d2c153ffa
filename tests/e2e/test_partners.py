"""Lawful confidential mail: approved partners, encrypted mail and secure-mail services are
tagged and audited with the legal ground; the same mail to anyone else is held."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from milter.audit.sqlite import SQLiteStore
from milter.cli import main
from tests.conftest import POLICY, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler
from tests.fixtures import files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PARTNERS = """
[[partners]]
name = "Samenwerkingsverband PO 30-06"
ground = "Wet passend onderwijs"
domains = ["swv3006.example"]

[[partners]]
name = "Jeugdzorg Regio"
ground = "Jeugdwet art. 7.4.0"
addresses = ["intake@jeugdzorg.example"]

[secure_mail]
headers = ["X-Securemail-Id"]
"""
OPP = files.mail_with([("OPP Sem groep 5.docx", files.docx(["Ontwikkelingsperspectief"],
                                                           label="Vertrouwelijk"), DOCX)])
ZIP = files.mail_with([("dossier.zip", files.encrypted_zip({"dossier.txt": b"zorg"}),
                        "application/zip")])


def smime() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "someone@school.example", "x@y.example", "Dossier"
    msg["Message-ID"] = "<smime@school.example>"
    msg.set_content(b"0\x82\x05\x00MIIB-not-really-cms", maintype="application",
                    subtype="pkcs7-mime", params={"smime-type": "enveloped-data"},
                    filename="smime.p7m")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


PGP = (b"From: someone@school.example\r\nTo: x@y.example\r\nSubject: Verslag\r\n"
       b"Message-ID: <pgp@school.example>\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\n"
       b"hQEMA1b2c3d4e5f6AQf/abc\r\n=XyZ1\r\n-----END PGP MESSAGE-----\r\n")


@pytest.fixture
def gw(tmp_path: Path, sink: tuple[SinkHandler, int]) -> Any:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.read_text() + PARTNERS)
    (tmp_path / "notices").symlink_to(POLICY.parent / "notices")
    g = GatewayThread(write_config(tmp_path, policy=policy,
                                   next_hop=f"smtp://127.0.0.1:{sink[1]}"))
    yield g, sink[0], tmp_path
    g.stop()


def relayed(sink: SinkHandler) -> list[Any]:
    """What reached the next hop from the teacher (notices from the postmaster aside)."""
    return [m for m in sink.messages if m.mail_from == "someone@school.example"]


def send(g: GatewayThread, raw: bytes, rcpt: str) -> None:
    with g.client() as c:
        c.sendmail("someone@school.example", [rcpt], raw)


def last_decision(tmp: Path) -> Any:
    return [r for r in SQLiteStore(tmp / "audit.sqlite3", "test").records()
            if r.event in ("delivered", "quarantined", "rejected")][-1]


@pytest.mark.parametrize("raw,rule,partner,outsider", [
    (OPP, "A1.confidential-attachment", "begeleider@swv3006.example", "ouder@gmail.example"),
    (ZIP, "A1.uninspectable", "intake@jeugdzorg.example", "ouder@gmail.example"),
    (smime(), "A1.uninspectable", "intake@jeugdzorg.example", "ouder@gmail.example"),
    (PGP, "A1.uninspectable", "zorg@swv3006.example", "ouder@gmail.example"),
], ids=["opp", "encrypted-zip", "smime", "openpgp"])
def test_to_a_partner_tagged_with_its_ground_to_anyone_else_held(
        gw: Any, raw: bytes, rule: str, partner: str, outsider: str) -> None:
    g, sink, tmp = gw
    send(g, raw, partner)
    (msg,) = relayed(sink)
    assert f"X-SKOT-Policy: {rule}; article=A1; action=tag".encode() in msg.content
    rec = last_decision(tmp)
    assert rec.event == "delivered" and rec.action == "tag"
    fired = next(r for r in rec.rules if r["id"] == rule)
    assert fired["action"] == "tag" and fired["evidence"]["partners"]
    assert fired["evidence"]["grounds"] in (["Wet passend onderwijs"], ["Jeugdwet art. 7.4.0"])
    # The same message to anyone else (or to a partner and someone else) is held.
    send(g, raw, outsider)
    with g.client() as c:
        c.sendmail("someone@school.example", [partner, outsider], raw)
    assert len(relayed(sink)) == 1
    assert len(g.running.gateway.quarantine.entries()) == 2


def test_a_secure_mail_service_message_is_tagged_not_held(gw: Any) -> None:
    g, sink, tmp = gw
    protected = OPP.replace(b"Subject:", b"X-Securemail-Id: 8f3a\r\nSubject:", 1)
    send(g, protected, "ouder@gmail.example")
    assert len(relayed(sink)) == 1
    fired = next(r for r in last_decision(tmp).rules if r["id"] == "A1.confidential-attachment")
    assert fired["action"] == "tag" and fired["evidence"]["protected_by"] == ["x-securemail-id"]


def test_encrypted_mail_to_outside_is_uninspectable_without_a_partner(
        make_gateway: Any, sink: tuple[SinkHandler, int]) -> None:
    g = make_gateway(f"smtp://127.0.0.1:{sink[1]}")
    for raw in (smime(), PGP):
        send(g, raw, "iemand@gmail.example")
    assert relayed(sink[0]) == []
    reasons = [e.meta["verdict"]["rules"][0]["reason"] for e in
               g.running.gateway.quarantine.entries()]
    assert sorted(r.split(":")[1].strip() for r in reasons) == [
        "openpgp-encrypted message", "smime-encrypted message"]


def test_partner_policy_errors_name_the_key(tmp_path: Path, capsys: Any) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.read_text() + '\n[[partners]]\nname = "GGD"\n'
                      'domains = ["ggd.example"]\nrules = ["A9.nothing"]\n')
    (tmp_path / "notices").symlink_to(POLICY.parent / "notices")
    assert main(["config", "check", "--config", str(write_config(tmp_path, policy=policy))]) \
        == 1
    err = capsys.readouterr().err
    assert "partners[1].ground: required: the legal ground" in err
    assert "partners[1].rules: no such rule 'A9.nothing'" in err


def test_config_check_requires_tls_to_every_partner(tmp_path: Path, capsys: Any) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.read_text() + PARTNERS)
    (tmp_path / "notices").symlink_to(POLICY.parent / "notices")
    cfg = write_config(tmp_path, policy=policy)
    assert main(["config", "check", "--config", str(cfg)]) == 1
    assert "gateway.tls_policy_map: not set" in capsys.readouterr().err
    tls = tmp_path / "tls_policy"
    tls.write_text("swv3006.example secure\njeugdzorg.example may\n")
    cfg.write_text(cfg.read_text().replace("[gateway]\n", '[gateway]\ntls_policy_map = '
                                           '"tls_policy"\n', 1))
    assert main(["config", "check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "partner domain jeugdzorg.example" in err and "swv3006" not in err
    # The map the command prints satisfies the check, and real Postfix reads it.
    assert main(["partners", "tls-map", "--config", str(cfg)]) == 0
    tls.write_text(capsys.readouterr().out)
    assert tls.read_text() == "swv3006.example secure\njeugdzorg.example secure\n"
    assert main(["config", "check", "--config", str(cfg)]) == 0
    postmap = shutil.which("postmap") or "/usr/sbin/postmap"
    if not Path(postmap).exists():
        pytest.fail("Postfix's postmap is not installed (.ci/run installs postfix)")
    (tmp_path / "pf").mkdir()
    (tmp_path / "pf" / "main.cf").write_text("")  # a private config directory for postmap
    pf = ["-c", str(tmp_path / "pf")]
    subprocess.run([postmap, *pf, f"hash:{tls}"], check=True)
    looked_up = subprocess.run([postmap, *pf, "-q", "jeugdzorg.example", f"hash:{tls}"],
                               capture_output=True, text=True, check=True).stdout
    assert looked_up.strip() == "secure"


def test_smtp_refusal_untouched_for_non_content_rules(gw: Any) -> None:
    """A partner is about confidential content, not sender rules: B1 still refuses."""
    g, _, _ = gw
    with g.client() as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("me@gmail.example", ["begeleider@swv3006.example"],
                   OPP.replace(b"From: someone@school.example", b"From: me@gmail.example"))
    assert err.value.smtp_code == 550
