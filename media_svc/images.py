"""Images on upload: dimensions, a small JPEG thumbnail and a BlurHash, with bomb limits."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from PIL import Image, ImageOps, UnidentifiedImageError

from media_svc import blurhash
from natter.errors import InvalidArgument, ResourceExhausted

THUMBNAIL_SIDE = 320
THUMBNAIL_QUALITY = 75
HASH_SIDE = 32
# Formats decoded for a thumbnail; other images are stored as files with their size only.
DECODED = {"image/jpeg", "image/png", "image/gif", "image/webp"}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    width: int
    height: int
    thumbnail: bytes
    blurhash: str


def probe(path: Path, max_pixels: int) -> ImageInfo:
    """Read an image's header, refuse one beyond max_pixels before decoding, then thumbnail.

    Decompression bombs: the pixel count is checked from the header alone, and Pillow's own
    limit is set to the same figure (it refuses twice that in the header already), so
    nothing larger is ever decoded. JPEGs decode at the smallest scale that still covers the thumbnail.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            # Between the limit and twice it Pillow only warns: the check below refuses it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise InvalidArgument("the image has no pixels", "BAD_IMAGE")
                if width * height > max_pixels:
                    raise _bomb(width, height, max_pixels)
                img.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                img.load()
                oriented = ImageOps.exif_transpose(img)
                if oriented.size != img.size and oriented.size == (height, width):
                    width, height = height, width
                rgb = oriented.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ResourceExhausted(
            f"the image has more pixels than the limit of {max_pixels:,}", "IMAGE_TOO_LARGE"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidArgument(f"the image cannot be read: {e}", "BAD_IMAGE") from e
    thumb = rgb.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    small = thumb.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR)
    pixels = cast(list[tuple[int, int, int]], list(small.get_flattened_data()))
    x = 4 if width >= height else 3
    y = 3 if width >= height else 4
    return ImageInfo(
        width, height, out.getvalue(), blurhash.encode(pixels, HASH_SIDE, HASH_SIDE, x, y)
    )


def _bomb(width: int, height: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the image is {width}x{height}: more pixels than the limit of {limit:,}",
        "IMAGE_TOO_LARGE",
    )
