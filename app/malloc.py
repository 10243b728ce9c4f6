"""glibc malloc tuned for a long-running server: a few arenas, so freed memory is reused."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# mallopt(3) parameter number of M_ARENA_MAX in glibc's malloc.h.
M_ARENA_MAX = -8
# Arenas for the whole process. glibc's default is 8 per core, one per thread that
# allocates at once: every aiosqlite connection and gRPC thread got its own arena, and the
# memory a connect storm freed in one stayed mapped there, unused by the others (about
# 2 KiB per idle device at 5,000 devices; docs/benchmarks.md, bench.idle).
ARENAS = 2


def limit_arenas(env: Mapping[str, str], arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas before any thread starts; False where it does not apply.

    An operator's own MALLOC_ARENA_MAX (which glibc reads at start) is left as it is, and
    on a C library other than glibc (musl, macOS) this does nothing.
    """
    if "MALLOC_ARENA_MAX" in env:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_ARENA_MAX, arenas))
    if not ok:
        logger.debug("mallopt(M_ARENA_MAX) refused")
    return ok
