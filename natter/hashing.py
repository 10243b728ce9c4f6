"""The one key hash every process agrees on: ring positions and rendezvous ordering."""

from __future__ import annotations

import hashlib


def key_hash(key: str) -> int:
    """Return the position of `key`: 8-byte BLAKE2b, big-endian; same in every process."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
