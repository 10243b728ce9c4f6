"""VAPID (RFC 8292): the server's signing key, Authorization headers per push service, topics."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02

# Signed tokens are reused per push service for a while; push services accept up to 24 h.
TOKEN_SECONDS = 12 * 3600
RENEW_BEFORE = 3600
# RFC 8030 §5.4: a Topic is at most 32 characters of the base64url alphabet.
TOPIC_CHARS = 32


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def audience(endpoint: str) -> str:
    """The `aud` claim for a push endpoint: its scheme, host and port."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def generate_pem() -> str:
    """A new VAPID private key (P-256), PEM."""
    key = Vapid02()
    key.generate_keys()
    return str(key.private_pem().decode())


class Vapid:
    """Signs with one private key; the public key is what browsers subscribe with."""

    def __init__(self, private_pem: str, subject: str) -> None:
        self._key = Vapid02.from_pem(private_pem.encode())
        self.subject = subject
        raw = self._key.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        # applicationServerKey for pushManager.subscribe, and the `k` of every header.
        self.public_key = b64url(raw)
        self._tokens: dict[str, tuple[float, str]] = {}

    @classmethod
    def from_file(cls, path: str, subject: str) -> Vapid:
        return cls(Path(path).read_text(), subject)

    def authorization(self, endpoint: str, now: float | None = None) -> str:
        """`vapid t=<JWT>,k=<key>` for this endpoint's push service, signed once per 11 h."""
        aud = audience(endpoint)
        at = time.time() if now is None else now
        cached = self._tokens.get(aud)
        if cached is not None and cached[0] - at > RENEW_BEFORE:
            return cached[1]
        exp = int(at) + TOKEN_SECONDS
        header = str(self._key.sign({"aud": aud, "sub": self.subject, "exp": exp})["Authorization"])
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[aud] = (exp, header)
        return header


def topic_key() -> str:
    return secrets.token_urlsafe(32)


def topic(key: str, thread_id: int) -> str:
    """A thread's Topic: the same for every push of the thread, meaningless to the push service."""
    digest = hmac.new(key.encode(), f"thread:{thread_id}".encode(), hashlib.sha256).digest()
    return b64url(digest)[:TOPIC_CHARS]
