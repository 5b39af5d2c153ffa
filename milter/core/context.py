"""Who is who in one transaction: direction and the role of every party.

Built from the envelope the front saw, the configured school domains and the directory. The
clock is passed in, never read here, so the core stays a pure function of its inputs.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from milter.core.limits import Limits
from milter.directory import EMPTY, Directory, Person

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Envelope:
    """What a front knows about a transaction before looking at the message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    client_ip: str = ""
    helo: str = ""
    auth_user: str = ""
    txid: str = ""


@dataclass(frozen=True)
class Context:
    envelope: Envelope
    school_domains: tuple[str, ...]
    internal_networks: tuple[Network, ...] = ()
    directory: Directory = EMPTY
    now: datetime = field(default_factory=lambda: datetime(1970, 1, 1, tzinfo=UTC))
    limits: Limits = field(default_factory=Limits)
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def client_is_internal(self) -> bool:
        return _in_networks(self.envelope.client_ip, self.internal_networks)

    @property
    def direction(self) -> str:
        """Outbound when the client is internal or authenticated (POLICY.md), else inbound."""
        return "outbound" if self.client_is_internal or self.envelope.auth_user else "inbound"

    def is_internal(self, address: str) -> bool:
        return domain_in(domain_of(address), self.school_domains)

    def role(self, address: str) -> str:
        """staff / pupil / parent / other from the directory, else internal / external."""
        person = self.directory.lookup(address)
        if person is not None:
            return person.role
        return "internal" if self.is_internal(address) else "external"

    def person(self, address: str) -> Person | None:
        return self.directory.lookup(address)

    @property
    def external_recipients(self) -> tuple[str, ...]:
        return tuple(r for r in self.envelope.rcpt_tos if not self.is_internal(r))

    @property
    def internal_recipients(self) -> tuple[str, ...]:
        return tuple(r for r in self.envelope.rcpt_tos if self.is_internal(r))


@functools.lru_cache(maxsize=4096)
def _in_networks(client_ip: str, networks: tuple[Network, ...]) -> bool:
    """Asked for every command of every transaction, for a few client addresses."""
    try:
        ip = ipaddress.ip_address(client_ip.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".").strip("<>") if "@" in address else ""


def domain_in(domain: str, domains: Sequence[str]) -> bool:
    """True for a school domain or any subdomain of one (pupils often have a subdomain)."""
    domain = domain.lower()
    return any(domain == d or domain.endswith("." + d) for d in domains)
