"""MIME sniffing: the type a file's first bytes show, reconciled with what the uploader said."""

from __future__ import annotations

from natter.errors import InvalidArgument

HEAD_BYTES = 4096
OCTET = "application/octet-stream"

# Types a container does not settle by itself: the uploader's word picks among them.
_FAMILIES = (
    {"audio/webm", "video/webm"},
    {"audio/ogg", "video/ogg", "audio/opus"},
    {"audio/mp4", "video/mp4", "audio/x-m4a", "audio/aac"},
    {
        "application/zip",
        "application/epub+zip",
        "application/java-archive",
        "application/vnd.android.package-archive",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    },
)
# Text types an uploader may name for a plain-text file; anything else is text/plain, so a
# page or a script is never served as one.
_TEXT = {"text/plain", "text/csv", "text/markdown", "text/calendar", "text/vcard", "text/x-vcard"}


def _ftyp(head: bytes) -> str | None:
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    brand = head[8:12]
    if brand in (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"):
        return "image/heic"
    if brand == b"avif":
        return "image/avif"
    if brand in (b"M4A ", b"M4B "):
        return "audio/mp4"
    if brand == b"qt  ":
        return "video/quicktime"
    return "video/mp4"


def sniff(head: bytes) -> str:
    """The MIME type of content that starts with `head` (its first few KiB)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and len(head) >= 12:
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}.get(
            head[8:12], OCTET
        )
    ftyp = _ftyp(head)
    if ftyp is not None:
        return ftyp
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"PK\x03\x04"):
        return "application/zip"
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "application/x-7z-compressed"
    if head.startswith(b"Rar!\x1a\x07"):
        return "application/vnd.rar"
    if head.startswith(b"\x7fELF"):
        return "application/x-executable"
    if head.startswith(b"MZ"):
        return "application/x-msdownload"
    if _is_text(head):
        return "text/plain"
    return OCTET


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut at the end of the sample is still text.
        return e.start >= len(head) - 3 and e.reason == "unexpected end of data"
    return True


def reconcile(declared: str, sniffed: str) -> str:
    """The type to store: the content's, or the uploader's where the content allows it.

    Declaring an image, audio or video type for content that is none of those (or another
    of them) is refused: the client says one thing and sends another.
    """
    declared = declared.split(";", 1)[0].strip().lower()
    if not declared or declared in (OCTET, sniffed):
        return sniffed
    for family in _FAMILIES:
        if declared in family and sniffed in family:
            return declared
    if sniffed == "text/plain":
        if declared.startswith(("image/", "audio/", "video/")):
            raise _mismatch(declared, sniffed)
        return declared if declared in _TEXT else sniffed
    major = declared.split("/", 1)[0]
    if major in ("image", "audio", "video") and sniffed.split("/", 1)[0] != major:
        raise _mismatch(declared, sniffed)
    return sniffed


def _mismatch(declared: str, sniffed: str) -> InvalidArgument:
    shown = "unrecognised data" if sniffed == OCTET else sniffed
    return InvalidArgument(
        f"the file was declared {declared} but its content is {shown}", "MIME_MISMATCH"
    )
