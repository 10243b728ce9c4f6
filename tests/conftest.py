"""Shared fixtures: a real embedded server on port 0 over a temporary SQLite file, SDK clients."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from natter.embedded import EmbeddedServer
from natter.sdk import Client, Connection
from natter.settings import Settings

PASSWORD = "correct horse battery"
_names = itertools.count(1)


def test_settings(data: Path, **changes: object) -> Settings:
    base = Settings(
        data_dir=data, grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0",
        argon2_memory_kib=1024, argon2_time_cost=1, ack_flush_seconds=0.05,
    )
    return base.replace(**changes)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return test_settings(tmp_path / "data")


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer(settings) as srv:
        yield srv


UserFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def user(server: EmbeddedServer) -> AsyncIterator[UserFactory]:
    """`await user("alice")` registers (if needed) and logs in a new device; closed after."""
    clients: list[Client] = []
    registered: set[str] = set()

    async def make(name: str = "", device: str = "test", address: str = "") -> Client:
        name = name or f"user{next(_names)}"
        c = Client(address or server.grpc_address)
        clients.append(c)
        if name not in registered:
            await c.register(name, PASSWORD)
            registered.add(name)
        await c.login(name, PASSWORD, device)
        return c

    yield make
    for c in clients:
        await c.close()


ConnFactory = Callable[..., Awaitable[Connection]]


@pytest.fixture
async def connect() -> AsyncIterator[ConnFactory]:
    conns: list[Connection] = []

    async def make(client: Client, **kwargs: object) -> Connection:
        conn = Connection(client, **kwargs)  # type: ignore[arg-type]
        conns.append(conn)
        await conn.start()
        return conn

    yield make
    for c in conns:
        await c.close()
