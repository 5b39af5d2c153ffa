"""STARTTLS with a configured certificate; AUTH only over TLS; the login drives B1 checks."""

from __future__ import annotations

import datetime
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from milter.fronts.smtp.auth import hash_password
from tests.conftest import make_message


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.school.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return tmp / "cert.pem", tmp / "key.pem"


@pytest.fixture
def tls_gateway(tmp_path: Path, sink: Any, make_gateway: Any) -> Any:
    self_signed(tmp_path)
    (tmp_path / "users.txt").write_text("# staff logins\nteacher:" + hash_password("geheim")
                                        + "\n")
    return make_gateway(f"smtp://127.0.0.1:{sink[1]}",
                        gateway_extra='tls_cert = "cert.pem"\ntls_key = "key.pem"\n'
                                      'auth_users = "users.txt"')


def tls_client(gw: Any) -> smtplib.SMTP:
    c = gw.client()
    c.ehlo()
    assert c.has_extn("starttls")
    assert not c.has_extn("auth")  # AUTH is not offered in plaintext
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.starttls(context=ctx)
    c.ehlo()
    return c


def test_auth_refused_without_tls(tls_gateway: Any) -> None:
    with tls_gateway.client() as c:
        c.ehlo()
        code, _ = c.docmd("AUTH", "PLAIN AHRlYWNoZXIAZ2VoZWlt")
        assert code == 538


def test_auth_over_tls_and_own_address_delivered(tls_gateway: Any, sink: Any) -> None:
    with tls_client(tls_gateway) as c:
        assert c.has_extn("auth")
        c.login("teacher", "geheim")
        c.sendmail("teacher@school.example", ["ouder@example.org"],
                   make_message(frm="teacher@school.example"))
    assert len(sink[0].messages) == 1


def test_wrong_password_refused(tls_gateway: Any) -> None:
    with tls_client(tls_gateway) as c, pytest.raises(smtplib.SMTPAuthenticationError):
        c.login("teacher", "fout")


def test_authenticated_user_sending_as_colleague_refused(tls_gateway: Any, sink: Any) -> None:
    with tls_client(tls_gateway) as c:
        c.login("teacher", "geheim")
        with pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("director@school.example", ["ouder@example.org"],
                       make_message(frm="director@school.example"))
    assert err.value.smtp_code == 550 and b"[B1.auth-identity]" in err.value.smtp_error
    assert sink[0].messages == []


def test_plaintext_mail_before_starttls_is_discarded(tls_gateway: Any) -> None:
    """HOSTILE-INPUTS 5: STARTTLS and MAIL in one segment; the MAIL must not survive."""
    c = tls_gateway.client()
    c.ehlo()
    c.sock.sendall(b"STARTTLS\r\nMAIL FROM:<someone@school.example>\r\n")
    code, _ = c.getreply()
    assert code == 220
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.sock = ctx.wrap_socket(c.sock, server_hostname="relay.school.example")
    c.file = None
    c.helo_resp = c.ehlo_resp = None
    c.esmtp_features = {}
    c.does_esmtp = False
    c.ehlo()
    code, _ = c.docmd("RCPT", "TO:<ouder@example.org>")
    assert code == 503
    c.close()
