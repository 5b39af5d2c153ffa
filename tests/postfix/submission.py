"""What a private Postfix needs for submission (587/465) in the tests: a TLS certificate and a
SASL service. The SASL service speaks Dovecot's authentication protocol (what Postfix's
``smtpd_sasl_type = dovecot`` talks to), for a fixed table of logins, on a loopback port: the
same role Dovecot plays at a school, without installing it."""

from __future__ import annotations

import base64
import datetime
import os
import socketserver
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path, host: str = "mx.school.example") -> tuple[Path, Path]:
    """A certificate and key for ``host`` (PEM), readable by Postfix's smtpd."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    for p in (cert_path, key_path):
        p.chmod(0o644)
    return cert_path, key_path


class DovecotAuth:
    """Dovecot's auth protocol (v1.2), mechanism PLAIN only, for ``users`` (login -> pw)."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.logins: list[str] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t%d\nCUID\t1\n"
                                 b"COOKIE\t%s\nDONE\n" % (os.getpid(), os.urandom(16).hex()
                                                           .encode()))
                pending: dict[str, str] = {}
                for raw in self.rfile:
                    parts = raw.decode().rstrip("\n").split("\t")
                    if parts[0] == "AUTH":
                        rid = parts[1]
                        resp = next((p[5:] for p in parts if p.startswith("resp=")), None)
                        if resp is None:
                            pending[rid] = "PLAIN"
                            self.wfile.write(f"CONT\t{rid}\t\n".encode())
                        else:
                            self.wfile.write(outer.answer(rid, resp))
                    elif parts[0] == "CONT" and parts[1] in pending:
                        del pending[parts[1]]
                        self.wfile.write(outer.answer(parts[1], parts[2]))

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, rid: str, resp: str) -> bytes:
        try:
            _authzid, login, password = base64.b64decode(resp).decode().split("\0")
        except ValueError:
            return f"FAIL\t{rid}\treason=malformed\n".encode()
        if self.users.get(login) == password:
            self.logins.append(login)
            return f"OK\t{rid}\tuser={login}\n".encode()
        return f"FAIL\t{rid}\tuser={login}\n".encode()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main_cf(cert: Path, key: Path, sasl_port: int) -> str:
    """main.cf lines a submission service needs (the site has its own cert and Dovecot)."""
    return (f"smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n"
            f"smtpd_sasl_type = dovecot\nsmtpd_sasl_path = inet:127.0.0.1:{sasl_port}\n"
            "smtpd_tls_loglevel = 0\n")


def ports(master: str, **listen: int) -> str:
    """master.cf with the recipe's services on loopback high ports: ``smtp=...``,
    ``submission=...``, ``submissions=...``."""
    for service, port in listen.items():
        master = master.replace(f"\n{service} ", f"\n127.0.0.1:{port} ").replace(
            f"\n{service}\t", f"\n127.0.0.1:{port}\t")
        if master.startswith(f"{service} "):
            master = f"127.0.0.1:{port} " + master[len(service) + 1:]
    return master
