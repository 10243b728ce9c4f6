"""Files the attachment tests send: real JPEGs and PNGs made with Pillow, and bad ones."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def jpeg(width: int = 800, height: int = 600, color: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    img = Image.new("RGB", (width, height), color)
    for x in range(0, width, 7):  # some detail, so it is not all one colour
        img.putpixel((x, (x * 3) % height), (255, 255, 255))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A small file whose header claims width x height pixels (1.6 gigapixels by default)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 8, 9)  # a few rows; never decoded
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", rows)
        + _chunk(b"IEND", b"")
    )


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
