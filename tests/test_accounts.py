"""Accounts, devices, tokens, contacts, login throttling, reflection and health, end to end."""

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from app.embedded import EmbeddedServer
from message_svc.accounts import LoginThrottle
from natter.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from natter.sdk import Client, Disconnected
from natter.settings import Settings
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.conftest import test_settings as make_settings
from tests.helpers import eventually, next_of


async def test_register_login_devices_logout(server: EmbeddedServer) -> None:
    c = Client(server.grpc_address)
    user = await c.register("Alice", PASSWORD, display_name="Alice A.", phone="+4915112345678")
    assert (user.username, user.display_name) == ("alice", "Alice A.")
    await c.login("alice", PASSWORD, "laptop")
    phone = Client(server.grpc_address)
    await phone.login("+4915112345678", PASSWORD, "phone")
    assert phone.user is not None and phone.user.user_id == user.user_id
    devices = await c.devices()
    assert [(x.name, x.current) for x in devices] == [("laptop", True), ("phone", False)]
    me = await c.me()
    assert me.phone == "+4915112345678" and not me.hide_last_seen
    await phone.logout()
    with pytest.raises(Unauthenticated):
        await phone.devices()
    assert [x.name for x in await c.devices()] == ["laptop"]  # the other device is untouched
    await c.close()
    await phone.close()


@pytest.mark.parametrize(
    ("username", "password", "phone", "reason"),
    [
        ("ab", PASSWORD, "", "BAD_USERNAME"),
        ("has space", PASSWORD, "", "BAD_USERNAME"),
        ("x" * 33, PASSWORD, "", "BAD_USERNAME"),
        ("carol", "", "", "WEAK_PASSWORD"),
        ("carol", "short", "", "WEAK_PASSWORD"),
        ("carol", "password", "", "WEAK_PASSWORD"),
        ("carol", "carol", "", "WEAK_PASSWORD"),
        ("carol", "aaaaaaaaaaaa", "", "WEAK_PASSWORD"),
        ("carol", PASSWORD, "12345", "BAD_PHONE"),
    ],
)
async def test_register_rejects_bad_input(
    server: EmbeddedServer, username: str, password: str, phone: str, reason: str
) -> None:
    async with Client(server.grpc_address) as c:
        with pytest.raises(InvalidArgument) as info:
            await c.register(username, password, phone=phone)
        assert info.value.reason == reason
        # Nothing half-written: the name is still free.
        if reason != "BAD_USERNAME":
            await c.register(username, PASSWORD)


async def test_duplicates_and_wrong_passwords(server: EmbeddedServer) -> None:
    async with Client(server.grpc_address) as c:
        await c.register("alice", PASSWORD, phone="+4915112345678")
        with pytest.raises(AlreadyExists):
            await c.register("alice", PASSWORD)
        with pytest.raises(AlreadyExists):
            await c.register("ALICE", PASSWORD)  # usernames are case-insensitive
        with pytest.raises(AlreadyExists):
            await c.register("bob", PASSWORD, phone="+4915112345678")
        for who, pw in (("alice", "wrong password"), ("nobody", PASSWORD), ("alice", "")):
            with pytest.raises(Unauthenticated) as info:
                await c.login(who, pw)
            assert info.value.reason == "BAD_CREDENTIALS"
            assert "wrong username or password" in info.value.message


async def test_missing_bad_and_revoked_tokens(server: EmbeddedServer) -> None:
    async with Client(server.grpc_address) as c:
        await c.register("alice", PASSWORD)
        with pytest.raises(Unauthenticated) as info:
            await c.devices()
        assert info.value.reason == "NO_TOKEN"
        c.token = "not-a-token"
        with pytest.raises(Unauthenticated) as info:
            await c.devices()
        assert info.value.reason == "BAD_TOKEN"
        await c.login("alice", PASSWORD)
        old = c.token
        await c.logout()
        c.token = old
        with pytest.raises(Unauthenticated):
            await c.contacts()


async def test_logout_closes_that_devices_streams_only(
    user: UserFactory, connect: ConnFactory
) -> None:
    laptop = await user("alice", device="laptop")
    phone = await user("alice", device="phone")
    await user("bob")
    c_laptop, c_phone = await connect(laptop), await connect(phone)
    await phone.logout()
    ev = await next_of(c_phone, Disconnected)
    assert isinstance(ev, Disconnected) and ev.final
    sent = await c_laptop.send("still here", recipient="bob")
    assert sent.seq == 1


async def test_contacts_add_list_remove_discover(user: UserFactory) -> None:
    alice = await user("alice")
    for name in ("carol", "bob", "dave"):
        await user(name)
    for name in ("dave", "bob", "carol"):
        await alice.add_contact(name)
    await alice.add_contact("bob", alias="Bobby")  # adding again updates, never duplicates
    contacts = await alice.contacts()
    assert [(c.user.username, c.alias) for c in contacts] == [
        ("bob", "Bobby"),
        ("carol", ""),
        ("dave", ""),
    ]
    await alice.remove_contact("carol")
    assert [c.user.username for c in await alice.contacts()] == ["bob", "dave"]
    with pytest.raises(NotFound):
        await alice.remove_contact("carol")
    with pytest.raises(NotFound):
        await alice.add_contact("nobody")
    with pytest.raises(InvalidArgument):
        await alice.add_contact("alice")
    found = await alice.discover(["bob", "nobody", "DAVE", "+10000000"])
    assert {k: v.username for k, v in found.items()} == {"bob": "bob", "DAVE": "dave"}
    with pytest.raises(InvalidArgument) as info:
        await alice.discover([f"user{i}" for i in range(1001)])
    assert info.value.reason == "TOO_MANY_IDENTIFIERS"


async def test_contacts_page_by_username(user: UserFactory) -> None:
    from natter.v1 import contact_service_pb2 as cpb

    alice = await user("alice")
    names = [f"friend{i:02d}" for i in range(12)]
    for n in names:
        await user(n)
        await alice.add_contact(n)
    seen: list[str] = []
    token = ""
    while True:
        res = await alice.contacts_stub.ListContacts(
            cpb.ListContactsRequest(page_size=5, page_token=token), metadata=alice.metadata()
        )
        seen.extend(c.user.username for c in res.contacts)
        token = res.next_page_token
        if not token:
            break
    assert seen == names


async def test_reflection_and_health_are_on(server: EmbeddedServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        res = await health.Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
        assert res.status == health_pb2.HealthCheckResponse.SERVING

    def list_services() -> set[str]:
        # The reflection client is synchronous: run it off the loop that serves the server.
        with grpc.insecure_channel(server.grpc_address) as sync_ch:
            return set(ProtoReflectionDescriptorDatabase(sync_ch).get_services())

    services = await asyncio.to_thread(list_services)
    assert {
        "natter.v1.AccountService",
        "natter.v1.ContactService",
        "natter.v1.ThreadService",
        "natter.v1.SocketService",
        "grpc.health.v1.Health",
    } <= services
    # Internal services are never on the public listener.
    assert not {s for s in services if "Internal" in s}


def test_login_throttle_doubles_the_delay_past_the_allowance_and_forgets_on_success() -> None:
    now = [100.0]
    throttle = LoginThrottle(
        Settings(login_failures_allowed=2, login_delay_seconds=1.0, login_delay_max_seconds=5.0),
        clock=lambda: now[0],
    )
    for _ in range(2):  # within the allowance: no delay
        throttle.check("alice")
        throttle.failed("alice")
    throttle.check("alice")
    waits = []
    for _ in range(5):
        throttle.failed("alice")
        with pytest.raises(ResourceExhausted) as info:
            throttle.check("alice")
        assert info.value.reason == "LOGIN_THROTTLED"
        waits.append(info.value.message)
        now[0] += 10.0  # past the longest delay
        throttle.check("alice")
    assert [w.rsplit("in ", 1)[1] for w in waits] == ["1 s", "2 s", "4 s", "5 s", "5 s"]
    throttle.check("bob")  # other accounts are not affected
    throttle.succeeded("alice")
    throttle.failed("alice")
    throttle.check("alice")  # the count started again


async def test_wrong_passwords_throttle_that_account_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", login_failures_allowed=3, login_delay_seconds=0.3)
    async with EmbeddedServer(settings) as server, Client(server.grpc_address) as c:
        await c.register("alice", PASSWORD)
        await c.register("bob", PASSWORD)
        for _ in range(4):
            with pytest.raises(Unauthenticated):
                await c.login("alice", "not the password")
        # Even the right password waits now, and costs no hash; bob logs in as usual.
        with pytest.raises(ResourceExhausted) as info:
            await c.login("alice", PASSWORD)
        assert info.value.reason == "LOGIN_THROTTLED"
        await c.login("bob", PASSWORD)

        async def alice_gets_in() -> bool:
            try:
                await c.login("alice", PASSWORD)
            except ResourceExhausted:
                return False
            return True

        await eventually(alice_gets_in, 5)
        with pytest.raises(Unauthenticated):  # a success cleared the count: no delay yet
            await c.login("alice", "not the password")
