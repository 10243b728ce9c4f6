"""`natter serve` caps glibc's malloc arenas, unless the operator chose their own."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from app import malloc


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the arena cap is glibc's mallopt(M_ARENA_MAX); other C libraries are left alone",
)
def test_the_arena_cap_applies_on_glibc_and_yields_to_the_operators_own() -> None:
    assert ctypes.util.find_library("c") is not None
    assert malloc.limit_arenas({}) is True
    assert malloc.limit_arenas({"MALLOC_ARENA_MAX": "8"}) is False
