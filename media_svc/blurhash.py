"""BlurHash (blurha.sh) encoding: a few dozen characters that render as an image's colours."""

from __future__ import annotations

import math
from collections.abc import Sequence

_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"


def _b83(value: int, length: int) -> str:
    out = ""
    for i in range(1, length + 1):
        digit = (value // 83 ** (length - i)) % 83
        out += _CHARS[digit]
    return out


def _linear(v: int) -> float:
    x = v / 255
    return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4


def _srgb(v: float) -> int:
    x = max(0.0, min(1.0, v))
    if x <= 0.0031308:
        return int(x * 12.92 * 255 + 0.5)
    return int((1.055 * float(x ** (1 / 2.4)) - 0.055) * 255 + 0.5)


def _sign_pow(v: float, e: float) -> float:
    return math.copysign(abs(v) ** e, v)


def encode(
    pixels: Sequence[tuple[int, int, int]], width: int, height: int, x: int = 4, y: int = 3
) -> str:
    """The BlurHash of RGB pixels (row by row) with x by y components (1..9 each)."""
    lin = [(_linear(r), _linear(g), _linear(b)) for r, g, b in pixels]
    factors: list[tuple[float, float, float]] = []
    for j in range(y):
        for i in range(x):
            norm = 1.0 if i == 0 and j == 0 else 2.0
            r = g = b = 0.0
            for py in range(height):
                cy = math.cos(math.pi * j * py / height)
                row = py * width
                for px in range(width):
                    basis = cy * math.cos(math.pi * i * px / width)
                    pr, pg, pb = lin[row + px]
                    r += basis * pr
                    g += basis * pg
                    b += basis * pb
            scale = norm / (width * height)
            factors.append((r * scale, g * scale, b * scale))
    dc, ac = factors[0], factors[1:]
    out = _b83((x - 1) + (y - 1) * 9, 1)
    if ac:
        actual = max(abs(c) for f in ac for c in f)
        quantised = max(0, min(82, math.floor(actual * 166 - 0.5)))
        maximum = (quantised + 1) / 166
        out += _b83(quantised, 1)
    else:
        maximum = 1.0
        out += _b83(0, 1)
    out += _b83((_srgb(dc[0]) << 16) + (_srgb(dc[1]) << 8) + _srgb(dc[2]), 4)
    for r, g, b in ac:
        q = [max(0, min(18, math.floor(_sign_pow(c / maximum, 0.5) * 9 + 9.5))) for c in (r, g, b)]
        out += _b83(q[0] * 19 * 19 + q[1] * 19 + q[2], 2)
    return out
