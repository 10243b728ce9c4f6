"""Accounts and devices: password changes, logging devices out, token lifetimes, the device
cap, and deleting an account — each end to end against a real server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from natter.sdk import Client, Disconnected
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.conftest import test_settings as make_settings
from tests.helpers import collect, eventually, gather_events, next_of

NEW_PASSWORD = "a brand new secret"


async def _logged_out(conn: object) -> None:
    ev = await next_of(conn, Disconnected)  # type: ignore[arg-type]
    assert isinstance(ev, Disconnected) and ev.final


async def test_changing_the_password_logs_out_the_other_devices(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    laptop, phone, tablet = [await user("alice", device=n) for n in ("laptop", "phone", "tablet")]
    c_phone, c_laptop = await connect(phone), await connect(laptop)
    with pytest.raises(Unauthenticated) as wrong:
        await laptop.change_password("not it", NEW_PASSWORD)
    assert wrong.value.reason == "BAD_CREDENTIALS"
    with pytest.raises(InvalidArgument) as weak:
        await laptop.change_password(PASSWORD, "short")
    assert weak.value.reason == "WEAK_PASSWORD"
    gone = await laptop.change_password(PASSWORD, NEW_PASSWORD)
    assert sorted(gone) == sorted([phone.device_id, tablet.device_id])
    await _logged_out(c_phone)  # its stream closed at once
    for other in (phone, tablet):
        with pytest.raises(Unauthenticated):
            await other.devices()
    assert [x.device_id for x in await laptop.devices()] == [laptop.device_id]
    assert c_laptop.device_id == laptop.device_id
    async with Client(server.grpc_address) as c:
        with pytest.raises(Unauthenticated):
            await c.login("alice", PASSWORD)
        await c.login("alice", NEW_PASSWORD)
        # Keeping the other devices is a choice.
        assert await c.change_password(NEW_PASSWORD, PASSWORD, keep_other_devices=True) == []
        assert len(await laptop.devices()) == 2


async def test_logging_out_a_device_by_id_or_all_the_others(
    user: UserFactory, connect: ConnFactory
) -> None:
    laptop = await user("alice", device="laptop")
    lost = await user("alice", device="lost phone")
    spare = await user("alice", device="spare")
    bob = await user("bob")
    c_lost = await connect(lost)
    await laptop.revoke_device(lost.device_id)
    await _logged_out(c_lost)
    with pytest.raises(Unauthenticated):
        await lost.contacts()
    with pytest.raises(NotFound) as info:
        await laptop.revoke_device(lost.device_id)  # already gone
    assert info.value.reason == "DEVICE_NOT_FOUND"
    with pytest.raises(NotFound):
        await laptop.revoke_device(bob.device_id)  # not one of hers
    await bob.devices()  # untouched
    assert await laptop.revoke_other_devices() == [spare.device_id]
    with pytest.raises(Unauthenticated):
        await spare.contacts()
    assert [x.name for x in await laptop.devices()] == ["laptop"]


async def test_the_device_list_shows_name_platform_and_last_active_time(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    phone = await user("alice", device="phone")
    before = datetime.now(UTC)
    [row] = await phone.devices()
    assert (row.name, row.platform, row.current) == ("phone", "python", True)
    assert row.last_active_time is not None and row.expire_time is not None
    await connect(phone)
    await asyncio.sleep(0.01)  # the clock must move for the next time to differ
    await server.hub.recheck()  # what the socket server does every session_recheck_seconds
    [later] = await phone.devices()
    assert later.last_active_time is not None and later.last_active_time > row.last_active_time
    assert later.last_active_time >= before


async def test_an_unused_token_lapses_and_use_renews_it(tmp_path: Path) -> None:
    lifetime = 2.0
    settings = make_settings(
        tmp_path / "data", token_lifetime_seconds=lifetime, session_recheck_seconds=0.2
    )
    async with EmbeddedServer(settings) as srv:
        async with Client(srv.grpc_address) as setup:
            await setup.register("alice", PASSWORD)
        used, idle, connected = (Client(srv.grpc_address) for _ in range(3))
        for c in (used, idle, connected):
            await c.login("alice", PASSWORD)
        from natter.sdk import Connection

        conn = await Connection(connected).start()
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def past_lifetime() -> bool:
            await used.devices()  # used all along: renewed as it goes
            return loop.time() - started > lifetime + 0.5

        # The idle device is not touched until well past its lifetime (a check would be a use).
        await eventually(past_lifetime, timeout=10)
        with pytest.raises(Unauthenticated) as lapsed:
            await idle.contacts()
        assert lapsed.value.reason == "TOKEN_EXPIRED"
        await used.devices()
        # A device with a live stream is renewed by its socket server's checks.
        await connected.devices()
        assert conn.synced.is_set()
        for c in (used, idle, connected):
            await c.close()
        await conn.close()


async def test_a_user_has_at_most_the_device_cap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", max_devices_per_user=2)
    async with EmbeddedServer(settings) as srv:
        clients = [Client(srv.grpc_address) for _ in range(4)]
        await clients[0].register("alice", PASSWORD)
        await clients[0].login("alice", PASSWORD, "one")
        await clients[1].login("alice", PASSWORD, "two")
        with pytest.raises(ResourceExhausted) as info:
            await clients[2].login("alice", PASSWORD, "three")
        assert info.value.reason == "TOO_MANY_DEVICES"
        # Neither was used since it logged in: the first is the least recently used.
        await clients[3].login("alice", PASSWORD, "four", replace_oldest=True)
        assert clients[3].replaced_devices == [clients[0].device_id]
        with pytest.raises(Unauthenticated):
            await clients[0].devices()
        assert [x.name for x in await clients[3].devices()] == ["two", "four"]
        for c in clients:
            await c.close()


async def test_deleting_an_account_keeps_its_messages_for_others_and_removes_the_rest(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    alice, bob = await user("alice"), await user("bob")
    await user("carol")
    await bob.add_contact("alice")
    await alice.add_contact("bob")
    group = await alice.create_group("club", ["bob", "carol"])  # alice is its only admin
    ca, cb = await connect(alice), await connect(bob)
    sent = await ca.send("remember me", recipient="bob")
    await collect(cb, 1)
    with pytest.raises(Unauthenticated):
        await alice.delete_account("wrong password")
    await alice.delete_account(PASSWORD)
    await next_of(ca, Disconnected)
    with pytest.raises(Unauthenticated):
        await alice.devices()
    async with Client(server.grpc_address) as again:
        with pytest.raises(Unauthenticated):
            await again.login("alice", PASSWORD)
    # Her message stays in bob's history, signed "Deleted account".
    [kept] = [m for m in (await bob.history(sent.thread_id))[0] if m.kind is d.MessageKind.TEXT]
    assert (kept.text, kept.sender.display_name) == ("remember me", "Deleted account")
    assert [x.user.username for x in await bob.contacts()] == []
    with pytest.raises(PermissionDenied) as info:
        await cb.send("alice?", thread_id=sent.thread_id)
    assert info.value.reason == "RECIPIENT_UNAVAILABLE"
    # She left the group; the longest-standing member became its admin.
    events = await gather_events(
        cb,
        lambda ev: isinstance(ev, d.Message) and ev.kind is d.MessageKind.SYSTEM,
        2,
        what="promotion and leaving",
    )
    assert [e.system.kind for e in events] == [
        d.SystemKind.ADMINS_PROMOTED,
        d.SystemKind.MEMBER_LEFT,
    ]
    info_ = await bob.thread(group.thread_id)
    assert {m.user.username for m in info_.members} == {"bob", "carol"}
    assert await bob.discover(["alice"]) == {}
    # The name can be taken again by someone new.
    async with Client(server.grpc_address) as fresh:
        await fresh.register("alice", PASSWORD)
