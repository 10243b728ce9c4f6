"""Time-ordered, globally unique message ids (ULID layout, Crockford base32)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every 10-bit value as its two digits: 13 look-ups make the 26 digits of an id.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_SHIFTS = tuple(range(120, -1, -10))


def new_msg_id(now_ms: int | None = None, random: bytes | None = None) -> str:
    """48 bits of milliseconds then 80 random bits: sorts by time, never collides in practice.

    `random` (10 bytes) is for tests; by default the bits come from os.urandom. One id is
    made per stored message, so the digits come two at a time from a table (a loop over 26
    single digits showed in the send path's profile).
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    bits = os.urandom(10) if random is None else random
    value = ((ms & 0xFFFF_FFFF_FFFF) << 80) | int.from_bytes(bits, "big")
    return "".join([_PAIRS[(value >> s) & 1023] for s in _SHIFTS])


def new_msg_ids(count: int, now_ms: int | None = None) -> list[str]:
    """`count` ids of one millisecond, their random bits read from os.urandom in one call."""
    ms = (int(time.time() * 1000) if now_ms is None else now_ms) & 0xFFFF_FFFF_FFFF
    bits = os.urandom(10 * count)
    out = []
    for at in range(0, 10 * count, 10):
        value = (ms << 80) | int.from_bytes(bits[at : at + 10], "big")
        out.append("".join([_PAIRS[(value >> s) & 1023] for s in _SHIFTS]))
    return out
