"""A private OpenLDAP server (Debian's slapd) on a loopback port, with a temporary database.

Never the system's service: its own cn=config (slapd.d made with ``slapadd -n0``), its own MDB
directory, started with ``slapd -h ldap://127.0.0.1:PORT/ -F DIR`` and stopped after the tests.
.ci/run installs slapd from Debian's packages when it is missing. The memberof overlay is on,
so people carry ``memberOf`` as they do in Active Directory.
"""

from __future__ import annotations

import ipaddress
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ldap3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.conftest import free_port, sink  # noqa: F401  (fixture)

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SCHEMA = Path("/etc/ldap/schema")
SUFFIX = "dc=school,dc=example"
ADMIN_DN, ADMIN_PW = f"cn=admin,{SUFFIX}", "admin-secret"
SERVICE_DN, SERVICE_PW = f"cn=skot-milter,ou=Service,{SUFFIX}", "service-secret"

CONFIG_LDIF = """\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {dir}/slapd.pid
olcTLSCACertificateFile: {dir}/ca.pem
olcTLSCertificateFile: {dir}/server.pem
olcTLSCertificateKeyFile: {dir}/server.key

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: memberof

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file://{schema}/core.ldif

include: file://{schema}/cosine.ldif

include: file://{schema}/inetorgperson.ldif

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {suffix}
olcDbDirectory: {dir}/data
olcDbMaxSize: 33554432
olcRootDN: {admin}
olcRootPW: {admin_pw}
olcAccess: to attrs=userPassword by anonymous auth by * none
olcAccess: to * by users read by * none

dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{0}}memberof
"""


def make_certificates(base: Path) -> None:
    """A test CA (``ca.pem``) and a server certificate for 127.0.0.1 signed by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skot test CA")])
    now = datetime.now(UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (base / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (base / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (base / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


class Slapd:
    """One slapd process; ``stop()``/``start()`` keep the data (for "the server is down").

    Plain LDAP (with StartTLS) on ``url``, LDAPS on ``ldaps_url``; ``ca.pem`` in its
    directory is the CA that signed its certificate."""

    def __init__(self, base: Path) -> None:
        self.dir = base
        self.port, self.ldaps_port = free_port(), free_port()
        make_certificates(base)
        self.proc: subprocess.Popen[bytes] | None = None
        (base / "data").mkdir()
        (base / "slapd.d").mkdir()
        ldif = base / "config.ldif"
        ldif.write_text(CONFIG_LDIF.format(dir=base, schema=SCHEMA, suffix=SUFFIX,
                                           admin=ADMIN_DN, admin_pw=ADMIN_PW))
        subprocess.run([SLAPADD, "-n0", "-F", str(base / "slapd.d"), "-l", str(ldif)],
                       check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    def start(self) -> None:
        """Start slapd and wait until it listens. A restart on the same ports can find one
        of them briefly taken (another test's client socket on the same ephemeral port):
        slapd then exits at once, so it is started again until the deadline."""
        deadline = time.monotonic() + 15
        exits: list[int] = []
        while time.monotonic() < deadline:
            log = (self.dir / "slapd.log").open("ab")
            # -d 0: stay in the foreground (killed by the test), log nothing.
            self.proc = subprocess.Popen([SLAPD, "-h", f"{self.url}/ {self.ldaps_url}/", "-F",
                                          str(self.dir / "slapd.d"), "-d", "0"],
                                         stdout=log, stderr=log)
            log.close()
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return
                except OSError:
                    time.sleep(0.05)
            if self.proc.poll() is not None:
                exits.append(self.proc.returncode)
                time.sleep(0.5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        raise RuntimeError(f"slapd did not listen within 15 s (exit codes {exits}): "
                           + (self.dir / "slapd.log").read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def admin(self) -> ldap3.Connection:
        return ldap3.Connection(ldap3.Server(self.url, get_info=ldap3.NONE), ADMIN_DN,
                                ADMIN_PW, auto_bind=True, raise_exceptions=True)

    def add(self, dn: str, classes: list[str], attrs: dict[str, object]) -> None:
        with self.admin() as conn:
            conn.add(dn, classes, attrs)

    def modify_add(self, dn: str, attr: str, value: str) -> None:
        with self.admin() as conn:
            conn.modify(dn, {attr: [(ldap3.MODIFY_ADD, [value])]})


def person(uid: str, ou: str, name: str, mail: str, **extra: object) -> tuple[str, list[str],
                                                                          dict[str, object]]:
    first, _, last = name.partition(" ")
    attrs: dict[str, object] = {"cn": name, "sn": last or first, "givenName": first,
                                "displayName": name, "mail": mail, "uid": uid, **extra}
    classes = ["inetOrgPerson"] + (["extensibleObject"] if "otherMailbox" in extra else [])
    return f"uid={uid},ou={ou},{SUFFIX}", classes, attrs


def populate(slapd: Slapd) -> None:
    """A small school: staff and pupils in OUs, a teachers' group, the media group."""
    slapd.add(SUFFIX, ["dcObject", "organization"], {"dc": "school", "o": "School"})
    for ou in ("Personeel", "Leerlingen", "Groepen", "Service"):
        slapd.add(f"ou={ou},{SUFFIX}", ["organizationalUnit"], {"ou": ou})
    slapd.add(SERVICE_DN, ["person", "simpleSecurityObject"],
              {"cn": "skot-milter", "sn": "service", "userPassword": SERVICE_PW})
    director = person("dana", "Personeel", "Dana Director", "director@school.example",
                      preferredLanguage="en-GB")
    slapd.add(*director)
    slapd.add(*person("theo", "Personeel", "Theo Teacher", "teacher@school.example",
                      manager=director[0], preferredLanguage="nl",
                      otherMailbox=["theo@home.example", "t.teacher@mail.example"]))
    slapd.add(*person("mia", "Personeel", "Mia Media", "mia@school.example",
                      manager=director[0]))
    slapd.add(*person("pim", "Leerlingen", "Pim Pupil", "pim@leerling.school.example",
                      otherMailbox=["ouder.pim@home.example"]))
    slapd.add(*person("noreply", "Service", "No Reply", "noreply@school.example"))
    teachers = f"cn=Leerkrachten,ou=Groepen,{SUFFIX}"
    slapd.add(teachers, ["groupOfNames"], {"cn": "Leerkrachten", "member": [
        f"uid=theo,ou=Personeel,{SUFFIX}", f"uid=mia,ou=Personeel,{SUFFIX}"]})
    slapd.add(f"cn=Media,ou=Groepen,{SUFFIX}", ["groupOfNames"],
              {"cn": "Media", "member": [f"uid=mia,ou=Personeel,{SUFFIX}"]})


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    if not Path(SLAPD).exists():
        pytest.fail("slapd (Debian package slapd) is not installed; .ci/run installs it "
                    "with apt-get, or: apt-get install slapd ldap-utils")
    base = Path(tempfile.mkdtemp(prefix="skot-slapd-"))
    server = Slapd(base)
    server.start()
    try:
        populate(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
