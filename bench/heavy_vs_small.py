"""Issue 13 item 1: how long another client's small message waits while a heavy message (a
zip of digit CSVs) is being inspected. Run from the project root:

    .venv/bin/python -m bench.heavy_vs_small [members]

Prints the seconds to the small message's 250 and to the heavy message's answer (both from
the heavy message's final dot, roughly)."""

from __future__ import annotations

import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.conftest import make_message, write_config
from tests.e2e.conftest import GatewayThread, SinkHandler, free_port
from tests.e2e.test_hardening import digit_csv_zip
from tests.fixtures import files


def main(members: int = 12) -> None:
    from aiosmtpd.controller import Controller

    sink, port = SinkHandler(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    tmp = Path(tempfile.mkdtemp(prefix="skot-bench-"))
    gw = GatewayThread(write_config(tmp, next_hop=f"smtp://127.0.0.1:{port}",
                                    gateway_extra="max_message_size = 104857600",
                                    extra="[inspection]\ntime_budget = 1.0\n"))
    heavy = files.mail_with([("leerlingen.zip", digit_csv_zip(members), "application/zip")])
    result: dict[str, object] = {}

    def send_heavy() -> None:
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=300) as c:
            c.ehlo("heavy")
            c.mail("someone@school.example")
            c.rcpt("ouder@example.org")
            c.putcmd("data")
            c.getreply()
            c.send(heavy + b".\r\n")
            result["sent"] = time.monotonic()
            result["heavy"] = c.getreply()
            result["heavy_at"] = time.monotonic()

    t = threading.Thread(target=send_heavy)
    t.start()
    while "sent" not in result:
        time.sleep(0.01)
    time.sleep(0.3)
    start = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=300) as c:
            c.sendmail("teacher@school.example", ["ouder@example.org"],
                       make_message(frm="teacher@school.example"))
        small = time.monotonic() - start
    finally:
        t.join()
        gw.stop()
        controller.stop()
    heavy_s = float(result["heavy_at"]) - float(result["sent"])  # type: ignore[arg-type]
    print(f"small message answered after {small:.2f} s (sent 0.3 s after the heavy dot); "
          f"heavy answered {result['heavy']} after {heavy_s:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
