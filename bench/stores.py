"""Which store a bench's own server runs on: SQLite, PostgreSQL, or either beside the MongoDB log.

`--stores sqlite,sqlite+mongodb,postgresql` runs the bench once per store, in the same
invocation, so the figures sit next to each other under the same load. PostgreSQL and
FerretDB (the MongoDB-wire server, devtools/ferretdb.py) are started once, in temporary
folders, and each run gets fresh databases on them.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from devtools.dbservers import PostgresServer, require
from devtools.ferretdb import FerretDbServer

STORES = ("sqlite", "postgresql", "sqlite+mongodb", "postgresql+mongodb")
MONGODB = "+mongodb"


def add_store_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stores",
        default="sqlite",
        help="comma-separated stores to run on, one run each, in this order: "
        + ", ".join(STORES)
        + " (default: sqlite)",
    )


def stores_of(args: argparse.Namespace) -> list[str]:
    stores = [s.strip() for s in str(args.stores).split(",") if s.strip()]
    unknown = [s for s in stores if s not in STORES]
    if unknown:
        raise SystemExit(f"--stores: unknown {unknown}; expected some of {STORES}")
    return stores


class StoreServers:
    """The database servers the runs need, started on first use and removed at the end."""

    def __init__(self) -> None:
        self.postgres: PostgresServer | None = None
        self.mongo: FerretDbServer | None = None

    def env(self, store: str) -> dict[str, str]:
        """NATTER_* settings for a fresh database (and message log) of `store`."""
        out: dict[str, str] = {}
        if store.removesuffix(MONGODB) == "postgresql":
            if self.postgres is None:
                require("postgresql")
                self.postgres = PostgresServer()
                asyncio.run(self.postgres.start())
            out["NATTER_DATABASE_URL"] = asyncio.run(self.postgres.create_database())
        if store.endswith(MONGODB):
            if self.mongo is None:
                self.mongo = FerretDbServer()
                asyncio.run(self.mongo.start())
            out["NATTER_MESSAGE_LOG"] = asyncio.run(self.mongo.create_database())
        return out

    def remove(self) -> None:
        for server in (self.postgres, self.mongo):
            if server is not None:
                server.remove()


@contextmanager
def store_servers() -> Iterator[StoreServers]:
    servers = StoreServers()
    try:
        yield servers
    finally:
        servers.remove()
