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
