"""How people name each other: a username or a phone number, normalised to the form stored."""

from __future__ import annotations


def normalise(identifier: str) -> str:
    """Usernames are case-insensitive; phone numbers (E.164, "+…") are kept as typed."""
    ident = identifier.strip()
    return ident if ident.startswith("+") else ident.lower()
