"""Sender authentication for inbound mail: SPF (RFC 7208), DKIM (dkimpy), DMARC (RFC 7489).

All DNS goes through one small ``Resolver`` (dnspython, timeouts, a cache). A DNS failure is a
``temperror``, never a pass and never a permanent failure: the front answers 451 where the
result matters. Results are computed before the pure rules run and handed to them in the
context, and written into an ``Authentication-Results:`` header (RFC 8601).
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dkim
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from publicsuffixlist import PublicSuffixList

from milter.config import Config
from milter.core.context import Context
from milter.core.message import Message
from milter.core.results import (
    AuthResults as AuthResults,  # re-exported: the callers of authenticate
)
from milter.core.results import DKIMResult, DMARCResult

_PSL = PublicSuffixList()  # bundled list: no network at run time


class DNSTempError(Exception):
    """A look-up that timed out or failed on the server side: try again later."""


class Resolver:
    """dnspython behind a tiny interface, with a TTL-bounded cache."""

    def __init__(self, nameservers: Sequence[str] = (), port: int = 53, timeout: float = 5.0,
                 cache_seconds: float = 300.0, cache_entries: int = 10000) -> None:
        if nameservers:
            self._r = dns.resolver.Resolver(configure=False)
            self._r.nameservers = list(nameservers)
            self._r.port = port
        else:
            self._r = dns.resolver.Resolver()
        self._r.timeout = timeout
        self._r.lifetime = timeout
        self._cache: dict[tuple[str, str], tuple[float, list[str]]] = {}
        self._ttl = cache_seconds
        self._max = cache_entries
        self._lock = threading.Lock()

    def query(self, name: str, rdtype: str) -> list[str]:
        """Records as text; [] for NXDOMAIN/no data; DNSTempError for timeouts and SERVFAIL."""
        key = (name.lower().rstrip("."), rdtype)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        ttl = self._ttl
        try:
            answer = self._r.resolve(key[0] + ".", rdtype, raise_on_no_answer=False)
            if rdtype == "TXT":
                out = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
            else:
                out = [r.to_text() for r in answer]
            if answer.rrset is not None:
                ttl = min(ttl, answer.rrset.ttl)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            out = []
        except (dns.exception.Timeout, dns.resolver.NoNameservers,
                dns.resolver.LifetimeTimeout) as exc:
            raise DNSTempError(f"{rdtype} {name}: {type(exc).__name__}") from exc
        except dns.exception.DNSException as exc:
            raise DNSTempError(f"{rdtype} {name}: {exc}") from exc
        with self._lock:
            if len(self._cache) >= self._max:
                # Full (names chosen by senders can be endless): drop what expired, then the
                # oldest entries, so the cache never grows without bound.
                for k in [k for k, (until, _) in self._cache.items() if until <= now]:
                    del self._cache[k]
                while len(self._cache) >= self._max:
                    del self._cache[next(iter(self._cache))]
            self._cache[key] = (now + ttl, out)
        return out

    def txt(self, name: str) -> list[str]:
        return self.query(name, "TXT")

    def dkim_dnsfunc(self, name: bytes, timeout: float = 5) -> bytes | None:
        """dkimpy's look-up hook: the first TXT record, or None."""
        records = self.txt(name.decode("ascii", "replace"))
        return records[0].encode() if records else None


def org_domain(domain: str) -> str:
    return str(_PSL.privatesuffix(domain.lower().rstrip(".")) or domain.lower())


# -- SPF -------------------------------------------------------------------------------------

class _PermError(Exception):
    pass


@dataclass
class _SPFState:
    resolver: Resolver
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    lookups: int = 0
    voids: int = 0

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > 10:
            raise _PermError("more than 10 DNS look-ups")


def spf_check(resolver: Resolver, ip: str, mail_from: str, helo: str) -> str:
    """pass / fail / softfail / neutral / none / permerror / temperror for the envelope."""
    domain = mail_from.rpartition("@")[2] if "@" in mail_from else helo
    if not domain:
        return "none"
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "permerror"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    state = _SPFState(resolver, addr, mail_from or f"postmaster@{helo}", helo)
    try:
        return _spf_domain(state, domain.lower(), depth=0)
    except DNSTempError:
        return "temperror"
    except _PermError:
        return "permerror"


def _spf_record(state: _SPFState, domain: str) -> str | None:
    records = [r for r in state.resolver.txt(domain) if r.lower().startswith("v=spf1")
               and (len(r) == 6 or r[6] == " ")]
    if len(records) > 1:
        raise _PermError("several SPF records")
    return records[0] if records else None


def _spf_domain(state: _SPFState, domain: str, depth: int) -> str:
    if depth > 10:
        raise _PermError("include loop")
    record = _spf_record(state, domain)
    if record is None:
        return "none"
    redirect = None
    for term in record.split()[1:]:
        if term.lower().startswith("redirect="):
            redirect = term.split("=", 1)[1]
            continue
        if "=" in term.split(":")[0]:
            continue  # other modifiers (exp=) do not change the result
        qualifier = "+"
        if term[0] in "+-~?":
            qualifier, term = term[0], term[1:]
        if _spf_match(state, domain, term, depth):
            return {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}[qualifier]
    if redirect:
        state.count()
        result = _spf_domain(state, _expand(redirect, state, domain), depth + 1)
        return "permerror" if result == "none" else result
    return "neutral"


def _expand(spec: str, state: _SPFState, domain: str) -> str:
    local = state.sender.partition("@")[0]
    return (spec.replace("%{d}", domain).replace("%{s}", state.sender)
            .replace("%{l}", local).replace("%{o}", state.sender.rpartition("@")[2])
            .replace("%{i}", str(state.ip)).replace("%{h}", state.helo))


def _cidr(term: str, default_domain: str, state: _SPFState) -> tuple[str, int | None, int | None]:
    m = re.match(r"^(?:[^:/]*)(?::([^/]+))?(?:/(\d+))?(?://(\d+))?$", term)
    if not m:
        raise _PermError(f"bad term {term}")
    target = _expand(m.group(1), state, default_domain) if m.group(1) else default_domain
    return target, int(m.group(2)) if m.group(2) else None, int(m.group(3)) if m.group(
        3) else None


def _in_hosts(state: _SPFState, hosts: list[str], v4: int | None, v6: int | None) -> bool:
    for h in hosts:
        try:
            net = ipaddress.ip_network(
                f"{h}/{(v4 if v4 is not None else 32) if ':' not in h else (v6 or 128)}",
                strict=False)
        except ValueError:
            continue
        if state.ip.version == net.version and state.ip in net:
            return True
    return False


def _addresses(state: _SPFState, name: str) -> list[str]:
    rdtype = "A" if state.ip.version == 4 else "AAAA"
    out = state.resolver.query(name, rdtype)
    if not out:
        state.voids += 1
        if state.voids > 2:
            raise _PermError("too many void look-ups")
    return out


def _spf_match(state: _SPFState, domain: str, term: str, depth: int) -> bool:
    mech = term.split(":", 1)[0].split("/", 1)[0].lower()
    if mech == "all":
        return True
    if mech in ("ip4", "ip6"):
        try:
            net = ipaddress.ip_network(term.split(":", 1)[1], strict=False)
        except (ValueError, IndexError):
            raise _PermError(f"bad {term}") from None
        return state.ip.version == net.version and state.ip in net
    if mech == "include":
        state.count()
        result = _spf_domain(state, _expand(term.split(":", 1)[1], state, domain), depth + 1)
        if result == "none":
            raise _PermError("include of a domain without SPF")
        if result in ("temperror", "permerror"):
            raise _PermError(result) if result == "permerror" else DNSTempError(result)
        return result == "pass"
    if mech == "a":
        state.count()
        target, v4, v6 = _cidr(term, domain, state)
        return _in_hosts(state, _addresses(state, target), v4, v6)
    if mech == "mx":
        state.count()
        target, v4, v6 = _cidr(term, domain, state)
        hosts: list[str] = []
        for mx in state.resolver.query(target, "MX")[:10]:
            hosts += _addresses(state, mx.split()[-1].rstrip("."))
        return _in_hosts(state, hosts, v4, v6)
    if mech == "exists":
        state.count()
        return bool(state.resolver.query(_expand(term.split(":", 1)[1], state, domain), "A"))
    if mech == "ptr":
        return False  # deprecated (RFC 7208 5.5); never a reason to pass
    raise _PermError(f"unknown mechanism {mech}")


# -- DKIM ------------------------------------------------------------------------------------

def dkim_verify(resolver: Resolver, raw: bytes) -> list[DKIMResult]:
    results: list[DKIMResult] = []
    count = len(re.findall(rb"(?im)^dkim-signature:", raw.split(b"\r\n\r\n", 1)[0]))
    for idx in range(min(count, 5)):
        d = dkim.DKIM(raw, minkey=1024)
        domain = selector = ""
        length: int | None = None
        try:
            ok = d.verify(idx=idx, dnsfunc=resolver.dkim_dnsfunc)
            fields_ = getattr(d, "signature_fields", {}) or {}
            domain = fields_.get(b"d", b"").decode("ascii", "replace").lower()
            selector = fields_.get(b"s", b"").decode("ascii", "replace")
            if b"l" in fields_:
                length = int(fields_[b"l"])
            result = "pass" if ok else "fail"
        except DNSTempError:
            result = "temperror"
        except dkim.ValidationError:
            result = "fail"  # e.g. body hash mismatch: the message was changed
        except dkim.DKIMException:
            result = "permerror"
        covers = True
        if length is not None:
            body = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
            covers = length >= len(body.rstrip(b"\r\n")) + 2 or not body.strip()
        results.append(DKIMResult(result, domain, selector, length, covers))
    return results


# -- DMARC -----------------------------------------------------------------------------------

def dmarc_record(resolver: Resolver, domain: str) -> dict[str, str] | None:
    for name in dict.fromkeys([domain, org_domain(domain)]):
        records = [r for r in resolver.txt(f"_dmarc.{name}") if r.lower().startswith(
            "v=dmarc1")]
        if len(records) == 1:
            tags = {}
            for part in records[0].split(";"):
                k, _, v = part.strip().partition("=")
                if k:
                    tags[k.strip().lower()] = v.strip()
            tags["_found_at"] = name
            return tags
    return None


def aligned(a: str, b: str, mode: str) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


def dmarc_check(resolver: Resolver, from_domain: str, spf: str, mail_from: str, helo: str,
                dkims: Sequence[DKIMResult]) -> DMARCResult:
    try:
        record = dmarc_record(resolver, from_domain)
    except DNSTempError:
        return DMARCResult("temperror", from_domain, "", "")
    tags = record or {}
    policy = tags.get("p", "") if not record or tags.get("_found_at") == from_domain else \
        tags.get("sp", tags.get("p", ""))
    # Without a DMARC record the result is "none" (RFC 7489 6.6.3), aligned or not; the
    # alignment is still recorded: B1.spoofed-school-domain judges it.
    passed = "pass" if record else "none"
    spf_domain = mail_from.rpartition("@")[2] if "@" in mail_from else helo
    if spf == "pass" and aligned(spf_domain, from_domain, tags.get("aspf", "r")):
        return DMARCResult(passed, from_domain, policy, "spf")
    for r in dkims:
        if r.result == "pass" and r.covers_body and aligned(r.domain, from_domain,
                                                            tags.get("adkim", "r")):
            return DMARCResult(passed, from_domain, policy, "dkim")
    if spf == "temperror" or any(r.result == "temperror" for r in dkims):
        return DMARCResult("temperror", from_domain, policy, "")
    return DMARCResult("fail" if record else "none", from_domain, policy, "")


# -- all together ----------------------------------------------------------------------------

def authenticate(resolver: Resolver, raw: bytes, client_ip: str, helo: str, mail_from: str,
                 from_domains: Sequence[str]) -> AuthResults:
    """SPF for the envelope, every DKIM signature, DMARC for every ``From:`` domain."""
    spf = spf_check(resolver, client_ip, mail_from, helo)
    dkims = tuple(dkim_verify(resolver, raw))
    dmarcs = tuple(dmarc_check(resolver, d, spf, mail_from, helo, dkims)
                   for d in dict.fromkeys(from_domains) if d)
    return AuthResults(spf, dkims, dmarcs, mail_from, helo)


def configured_authenticator(cfg: Config) -> Callable[[Message, Context], AuthResults] | None:
    """SPF/DKIM/DMARC through the configured resolver (``[dns]``), or None when the config
    turns authentication off: ``serve`` and ``check`` use this one function."""
    if not cfg.dns.authenticate:
        return None
    resolver = Resolver(cfg.dns.nameservers, cfg.dns.port, cfg.dns.timeout,
                        cfg.dns.cache_seconds, cfg.dns.cache_entries)

    def auth(message: Message, ctx: Context) -> AuthResults:
        env = ctx.envelope
        return authenticate(resolver, message.raw, env.client_ip, env.helo, env.mail_from,
                            [a.domain for a in message.authors if a.valid])

    return auth


def claimed_authserv_id(value: str) -> str:
    """The authserv-id an ``Authentication-Results:`` value claims (RFC 8601 2.2): leading
    whitespace, folding and (nested) comments skipped, a quoted-string unquoted."""
    i, depth = 0, 0
    while i < len(value):
        c = value[i]
        if depth:
            if c == "\\":
                i += 1
            depth += {"(": 1, ")": -1}.get(c, 0)
        elif c == "(":
            depth = 1
        elif not c.isspace():
            break
        i += 1
    rest = value[i:]
    if rest.startswith('"'):
        q = re.match(r'"((?:[^"\\]|\\.)*)"', rest)
        return re.sub(r"\\(.)", r"\1", q.group(1)) if q else ""
    token = re.match(r"[^\s;()]*", rest)
    return token.group(0) if token else ""


def strip_our_results(raw: bytes, authserv_id: str) -> bytes:
    """Remove incoming ``Authentication-Results:`` fields that claim to be ours (RFC 8601 5),
    however they are spelled: any case, folded, with comments or quotes around our id."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if b"authentication-results" not in head.lower():
        return raw
    ours = authserv_id.lower()
    fields: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    for field_lines in fields:
        name, colon, value = b"\r\n".join(field_lines).partition(b":")
        if colon and name.strip().lower() == b"authentication-results" and \
                claimed_authserv_id(value.decode("utf-8", "replace")).lower() == ours:
            continue
        kept.extend(field_lines)
    return b"\r\n".join(kept) + sep + body
