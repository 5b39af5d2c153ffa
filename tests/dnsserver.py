"""A real DNS server on loopback for the tests: a few lines on top of dnspython's messages.

It answers from a zone dict {(name, type): [rdata text]}; names in ``silent`` get no answer at
all (a time-out), names in ``servfail`` get SERVFAIL. Never the internet.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DNSServer:
    def __init__(self) -> None:
        self.zone: dict[tuple[str, str], list[str]] = {}
        self.silent: set[str] = set()
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.zone.setdefault((name.lower().rstrip("."), rdtype.upper()), []).extend(values)

    def txt(self, name: str, text: str) -> None:
        """Add a TXT record, split into 255-octet strings as a zone file would."""
        chunks = " ".join('"' + text[i:i + 255].replace('"', '\\"') + '"'
                          for i in range(0, len(text), 255))
        self.add(name, "TXT", chunks)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001
                continue
            question = query.question[0]
            name = question.name.to_text().lower().rstrip(".")
            rdtype = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, rdtype))
            if name in self.silent:
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif (name, rdtype) in self.zone:
                response.answer.append(dns.rrset.from_text_list(
                    question.name, 300, "IN", rdtype, self.zone[(name, rdtype)]))
            elif not any(n == name for n, _ in self.zone):
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), addr)

    def start(self) -> DNSServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@contextmanager
def running() -> Iterator[DNSServer]:
    server = DNSServer().start()
    try:
        yield server
    finally:
        server.stop()
