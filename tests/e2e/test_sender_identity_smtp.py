"""Issue 15 over real SMTP: every sender-identity case through the SMTP front.

Outbound cases log in over STARTTLS (``teacher``) or come from the internal network; inbound
ones reach a gateway whose internal network excludes loopback, so 127.0.0.1 is the outside.
What the client hears, what the next hop receives (tag header, the recipient's banner) and
the audit record are checked.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from milter.audit.sqlite import SQLiteStore
from milter.fronts.smtp.auth import hash_password
from tests.conftest import write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.e2e.test_smtp_tls_auth import self_signed, tls_client
from tests.fixtures.sender import BANNER_MARK, CASES, Case, enforce_policy, write_staff


@pytest.fixture(scope="module")
def sink() -> Iterator[SinkHandler]:
    handler = SinkHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    handler.port = controller.port  # type: ignore[attr-defined]
    yield handler
    controller.stop()


def start_gateway(tmp: Path, sink: SinkHandler, inbound: bool) -> GatewayThread:
    tmp.mkdir()
    self_signed(tmp)
    (tmp / "users.txt").write_text("teacher:" + hash_password("geheim") + "\n")
    cfg = write_config(tmp, next_hop=f"smtp://127.0.0.1:{sink.port}",  # type: ignore[attr-defined]
                       policy=enforce_policy(tmp),
                       internal='["10.255.0.0/16"]' if inbound else '["127.0.0.0/8"]',
                       gateway_extra='tls_cert = "cert.pem"\ntls_key = "key.pem"\n'
                                     'auth_users = "users.txt"',
                       extra="[notices]\nenabled = false\n")
    write_staff(tmp)
    return GatewayThread(cfg)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory,
             sink: SinkHandler) -> Iterator[dict[bool, tuple[GatewayThread, Path]]]:
    base = tmp_path_factory.mktemp("sender-smtp")
    started = {inbound: (start_gateway(base / name, sink, inbound), base / name)
               for inbound, name in ((False, "out"), (True, "in"))}
    yield started
    for gw, _ in started.values():
        gw.stop()


def send(gw: GatewayThread, case: Case) -> None:
    if case.auth:
        with tls_client(gw) as c:
            c.login(case.auth, "geheim")
            c.sendmail(case.mail_from, list(case.rcpts), case.raw)
    else:
        with gw.client() as c:
            c.sendmail(case.mail_from, list(case.rcpts), case.raw)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sender_identity_over_smtp(gateways: dict[bool, tuple[GatewayThread, Path]],
                                   sink: SinkHandler, case: Case) -> None:
    gw, state = gateways[case.inbound]
    sink.messages.clear()
    if case.action == "reject":
        with pytest.raises(smtplib.SMTPDataError) as err:
            send(gw, case)
        assert err.value.smtp_code == 550
        assert f"[{case.rule}]".encode() in err.value.smtp_error
        assert sink.messages == []
    else:
        send(gw, case)
        (got,) = sink.messages
        msg = message_from_bytes(got.content)
        tags = [str(v) for v in msg.get_all("X-SKOT-Policy") or []]
        if case.rule is None:
            assert tags == [] and got.content == case.raw  # untouched
        else:
            assert any(t.startswith(f"{case.rule}; ") for t in tags)
        if case.rule == "B1.lookalike-sender":
            assert BANNER_MARK.encode() in got.content.partition(b"\r\n\r\n")[2]
    record = list(SQLiteStore(state / "audit.sqlite3", "test").records())[-1]
    assert record.event == ("rejected" if case.action == "reject" else "delivered")
    fired = {r["id"]: r for r in record.rules}
    if case.rule is None:
        assert not {"B1.sender-headers", "B1.lookalike-sender"} & set(fired)
    else:
        key, value = case.evidence or ("", "")
        assert value in fired[case.rule]["evidence"][key]
