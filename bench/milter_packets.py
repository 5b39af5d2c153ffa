"""The milter front's cost per packet: what Postfix sends for one message, decoded and handled.

    python bench/milter_packets.py [--headers 10] [--rounds 5]

Replays, through the milter front's decoder and connection (no socket, no policy), the packets
Postfix 3.7 sends for a message on an open connection, everything but the end of the message
(which is the policy's and the audit's cost): the abort after the previous message, MAIL, RCPT,
the headers and one body chunk, each with its macro packet. Two streams, as captured from a real
Postfix (tests/postfix/test_postfix.py counts them): with the negotiation before issue 19
(Postfix's default macros, the DATA and end-of-header steps) and with the present one (only the
macros we read, no DATA or end-of-header step). Prints microseconds per message, best of the
rounds; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.fronts.milter import codec, server  # noqa: E402

QUEUE_ID = {"i": "AA922214E7B"}


class Gateway:
    """Just what MAIL and the headers reach for: a transaction and the size limits."""

    runtime = SimpleNamespace(config=SimpleNamespace(
        gateway=SimpleNamespace(max_message_size=10_000_000, spool_threshold=1_000_000),
        state_dir=Path("/tmp")))

    def begin(self, front: str, **kw: Any) -> Any:
        return SimpleNamespace(runtime=self.runtime, recipients=[], extra=kw.get("extra", {}))


def stream(headers: int, negotiated: bool) -> list[codec.Event]:
    """What Postfix sends; ``negotiated``: after our macro lists and SMFIP_NODATA/NOEOH."""
    mail = {} if negotiated else {"{mail_addr}": "someone@school.example",
                                  "{mail_host}": "[127.0.0.1]:60905", "{mail_mailer}": "smtp"}
    rcpt = {} if negotiated else {"{rcpt_addr}": "ouder@example.org",
                                  "{rcpt_host}": "[127.0.0.1]:60905", "{rcpt_mailer}": "smtp"}
    events: list[codec.Event] = [
        codec.Abort(), codec.Macro(b"M", mail), codec.Mail(("<someone@school.example>",)),
        codec.Macro(b"R", rcpt), codec.Rcpt(("<ouder@example.org>",)),
        codec.Macro(b"T", {} if negotiated else QUEUE_ID)]
    if not negotiated:
        events.append(codec.Data())
    for n in range(headers):
        events += [codec.Macro(b"L", QUEUE_ID),
                   codec.Header(f"X-Field-{n}", b"the value of field number %d" % n)]
    if not negotiated:
        events += [codec.Macro(b"N", QUEUE_ID), codec.EndOfHeaders()]
    return events + [codec.Macro(b"B", QUEUE_ID), codec.Body(b"x" * 1800),
                     codec.Macro(b"E", QUEUE_ID)]


def per_message(events: list[codec.Event], negotiated: bool, rounds: int, n: int = 3000
                ) -> float:
    wire = b"".join(codec.encode_command(e) for e in events)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            conn = server.MilterConnection(Gateway())  # type: ignore[arg-type]
            conn.order.state = codec.ST_ENDM  # the previous message just ended
            conn.no_reply = server.NO_REPLY_ALL
            decoder = codec.Decoder()
            if negotiated:
                conn.order.skip(server.NO_SEND)
                decoder = codec.Decoder(skip_macros=server.SKIP_MACROS)
            for event in decoder.feed(wire):
                conn.handle_now(event)
        best = min(best, (time.perf_counter() - start) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--headers", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for negotiated, title in ((False, "before issue 19"), (True, "now")):
        events = stream(args.headers, negotiated)
        us = per_message(events, negotiated, args.rounds) * 1e6
        print(f"{title:16} {len(events) + 1:3d} packets per message (with its end), "
              f"{us:6.1f} us to decode and handle all but the end")


if __name__ == "__main__":
    main()
