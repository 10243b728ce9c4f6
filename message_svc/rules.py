"""Validation rules for what people type: usernames, phones, passwords, titles, message text."""

from __future__ import annotations

import re
import unicodedata

from natter.errors import InvalidArgument

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{2,31}$")
PHONE = re.compile(r"^\+[0-9]{7,15}$")
CLIENT_MSG_ID = re.compile(r"^[\x21-\x7e]{1,64}$")
_COMMON_PASSWORDS = frozenset(
    {
        "password",
        "12345678",
        "123456789",
        "1234567890",
        "qwertyui",
        "qwerty123",
        "11111111",
        "password1",
        "iloveyou",
        "abcdefgh",
        "letmein1",
        "00000000",
        "87654321",
        "passw0rd",
    }
)


def username(value: str) -> str:
    if not USERNAME.match(value):
        raise InvalidArgument(
            "username must be 3-32 characters of a-z, 0-9, '.', '_' or '-', starting with a "
            "letter or digit",
            "BAD_USERNAME",
        )
    return value


def phone(value: str) -> str | None:
    if not value:
        return None
    if not PHONE.match(value):
        raise InvalidArgument("phone must be in E.164 form: '+' and 7-15 digits", "BAD_PHONE")
    return value


def _printable(value: str, what: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(
            f"{what} must not be empty", f"EMPTY_{what.upper().replace(' ', '_')}"
        )
    if len(value) > limit:
        raise InvalidArgument(f"{what} is longer than {limit} characters", "TOO_LONG")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidArgument(f"{what} must not contain control characters", "BAD_CHARACTERS")
    return value


def display_name(value: str) -> str:
    return _printable(value, "display name", 64)


def title(value: str) -> str:
    return _printable(value, "title", 128)


def password(value: str, user: str) -> str:
    if not value:
        raise InvalidArgument("password must not be empty", "WEAK_PASSWORD")
    if len(value) < 8:
        raise InvalidArgument("password must be at least 8 characters", "WEAK_PASSWORD")
    if len(value) > 1024:
        raise InvalidArgument("password must be at most 1024 characters", "BAD_PASSWORD")
    if value.lower() in _COMMON_PASSWORDS or value.lower() == user or len(set(value)) < 4:
        raise InvalidArgument("password is too easy to guess", "WEAK_PASSWORD")
    return value


def text(value: str, max_bytes: int) -> str:
    if not value or not value.strip():
        raise InvalidArgument("message text must not be empty", "EMPTY_TEXT")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(
            f"message text is {size} bytes; the limit is {max_bytes}", "TEXT_TOO_LONG"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgument("message text is not valid UTF-8", "BAD_UTF8") from e
    return value


def client_msg_id(value: str) -> str:
    if not CLIENT_MSG_ID.match(value):
        raise InvalidArgument(
            "client_msg_id must be 1-64 printable ASCII characters", "BAD_CLIENT_MSG_ID"
        )
    return value


MAX_ATTACHMENTS = 10
MIN_WORD = 3
MAX_WORDS = 10
_WORD = re.compile(r"[^\W_]+")  # letters and digits: "_" separates words everywhere


def emoji(value: str) -> str:
    """One emoji (a grapheme of a few code points: skin tones, ZWJ sequences, flags)."""
    if not value:
        return value
    if len(value) > 16 or len(value.encode("utf-8", "surrogatepass")) > 64:
        raise InvalidArgument("a reaction is one emoji", "BAD_EMOJI")
    for ch in value:
        cat = unicodedata.category(ch)
        if ch.isascii() and not ch.isdigit() and ch not in "#*":
            raise InvalidArgument("a reaction is one emoji, not text", "BAD_EMOJI")
        if cat in ("Cc", "Zs", "Zl", "Zp") or (cat == "Cf" and ch != "\u200d"):
            raise InvalidArgument("a reaction is one emoji", "BAD_EMOJI")
    if not any(ord(ch) > 0x2000 for ch in value):
        raise InvalidArgument("a reaction is one emoji", "BAD_EMOJI")
    return value


def caption(value: str, max_bytes: int) -> str:
    """A caption may be empty; otherwise it is text like any other."""
    return text(value, max_bytes) if value.strip() else ""


def search_words(query: str) -> list[str]:
    """The words of a query that every store can find: three letters or more, ten at most."""
    words = [w.lower() for w in _WORD.findall(query) if len(w) >= MIN_WORD]
    words = list(dict.fromkeys(words))
    if not words:
        raise InvalidArgument(
            f"search for a word of at least {MIN_WORD} letters", "QUERY_TOO_SHORT"
        )
    if len(words) > MAX_WORDS:
        raise InvalidArgument(f"search for at most {MAX_WORDS} words", "QUERY_TOO_LONG")
    return words
