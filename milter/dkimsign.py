"""Outbound DKIM signing (dkimpy) for the school domains, and key generation.

Signing happens last, after every header the gateway adds, so tagged mail still verifies at
the receiver. RSA keys are PEM files; Ed25519 keys are the base64 seed dkimpy reads.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from milter.config import Config, ConfigError
from milter.core.context import domain_of

SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                  b"mime-version", b"content-type", b"content-transfer-encoding",
                  b"in-reply-to", b"references", b"x-skot-policy"]


@dataclass(frozen=True)
class Key:
    domain: str
    selector: str
    private: bytes
    algorithm: bytes  # b"rsa-sha256" or b"ed25519-sha256"


def read_key(path: Path, domain: str, selector: str) -> Key:
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return Key(domain.lower(), selector, data, b"rsa-sha256")
    raw = base64.b64decode(data.strip(), validate=True)
    if len(raw) != 32:
        raise ValueError("expected an RSA PEM key or a base64 Ed25519 seed of 32 bytes")
    return Key(domain.lower(), selector, data.strip(), b"ed25519-sha256")


@dataclass(frozen=True)
class Signer:
    keys: tuple[Key, ...]

    @classmethod
    def from_config(cls, cfg: Config) -> Signer | None:
        if not cfg.dkim.sign or not cfg.dkim.keys:
            return None
        keys = []
        for i, k in enumerate(cfg.dkim.keys):
            try:
                keys.append(read_key(cfg.resolve(k["key"]), k["domain"], k["selector"]))
            except (OSError, ValueError) as exc:
                raise ConfigError(cfg.path, f"dkim.keys[{i + 1}].key", f"cannot use key "
                                  f"{k['key']}: {exc}") from None
        return cls(tuple(keys))

    def sign(self, message: bytes, author: str) -> bytes:
        """Prepend DKIM-Signature header(s) for the author's domain (RSA and Ed25519 alike)."""
        return self.signature(message, author) + message

    def signature(self, message: bytes, author: str) -> bytes:
        """The DKIM-Signature header line(s) for the author's domain (empty for others)."""
        domain = domain_of(author)
        sigs = b""
        for key in self.keys:
            if key.domain != domain:
                continue
            sigs += dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private,
                              include_headers=SIGNED_HEADERS,
                              signature_algorithm=key.algorithm, linesep=b"\r\n")
        return sigs


def keygen(domain: str, selector: str, directory: Path, kind: str = "rsa") -> tuple[Path, str]:
    """Write a private key file and return (path, DNS TXT record line)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{domain}.{selector}.{kind}.key"
    if kind == "ed25519":
        ed = ed25519.Ed25519PrivateKey.generate()
        seed = ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        public = ed.public_key().public_bytes(serialization.Encoding.Raw,
                                              serialization.PublicFormat.Raw)
        content = base64.b64encode(seed) + b"\n"
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    else:
        rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        content = rk.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption())
        der = rk.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    return path, record

