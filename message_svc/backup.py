"""Online backup of the embedded SQLite database, consistent while the server keeps writing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from natter.errors import FailedPrecondition, NotFound

PAGES_PER_STEP = 1024  # copy in steps so a running server's writers are never held up long


def _copy(source: Path, dest: Path) -> tuple[int, int]:
    if not source.is_file():
        raise NotFound(f"no database at {source}")
    if dest.exists():
        raise FailedPrecondition(f"{dest} exists; name a new file", "DESTINATION_EXISTS")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            out = sqlite3.connect(dest)
            try:
                src.backup(out, pages=PAGES_PER_STEP)
                out.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
                (count,) = out.execute("SELECT count(*) FROM messages").fetchone()
            finally:
                out.close()
        finally:
            src.close()
    except BaseException:
        dest.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    return int(count), dest.stat().st_size


async def backup(database_url: str, dest: Path) -> tuple[int, int]:
    """Copy the database at database_url to dest (a new file): (messages in it, bytes).

    SQLite's backup API restarts a step when a writer changed a page it had copied, so the
    copy is a consistent snapshot even while `natter serve` runs. PostgreSQL and MariaDB
    have their own tools (pg_dump, mariadb-dump); this refuses them with that advice.
    """
    url = sa.make_url(database_url)
    if url.get_backend_name() != "sqlite":
        tool = "pg_dump" if url.get_backend_name() == "postgresql" else "mariadb-dump"
        raise FailedPrecondition(
            f"natter backup copies the embedded SQLite database; for "
            f"{url.get_backend_name()} use {tool}",
            "NOT_SQLITE",
        )
    return await asyncio.to_thread(_copy, Path(url.database or ""), dest)
