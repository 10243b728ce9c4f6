"""Who may register: the first account becomes admin, then open (rate limited), invite or
closed; an admin's choice overrides the setting."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from app.embedded import EmbeddedServer
from natter.errors import PermissionDenied, ResourceExhausted
from natter.rpc import error_from_rpc
from natter.sdk import Client
from natter.v1 import account_service_pb2 as apb
from natter.v1 import account_service_pb2_grpc as apb_grpc
from natter.v1 import admin_service_pb2 as adpb
from tests.conftest import PASSWORD
from tests.conftest import test_settings as make_settings


async def register_from(server: EmbeddedServer, name: str, address: str) -> None:
    """Register as if from `address`, through a proxy the server trusts (x-forwarded-for)."""
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        try:
            await apb_grpc.AccountServiceStub(channel).Register(
                apb.RegisterRequest(username=name, password=PASSWORD),
                metadata=(("x-forwarded-for", address),),
            )
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from None


async def _register(server: EmbeddedServer, name: str, invite: str = "") -> Client:
    c = Client(server.grpc_address)
    await c.register(name, PASSWORD, invite_code=invite)
    await c.login(name, PASSWORD)
    return c


async def test_the_first_account_of_a_fresh_install_is_its_admin(server: EmbeddedServer) -> None:
    first = await _register(server, "alice")
    second = await _register(server, "bob")
    assert (first.is_admin, second.is_admin) == (True, False)
    assert (await first.me()).is_admin and not (await second.me()).is_admin
    assert await first.registration_policy() == "open"
    await first.admin("ListUsers", adpb.ListUsersRequest())
    with pytest.raises(PermissionDenied):
        await second.admin("ListUsers", adpb.ListUsersRequest())
    for c in (first, second):
        await c.close()


async def test_open_registration_is_limited_per_address_and_overall(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data", registrations_per_ip_per_hour=2, registrations_per_hour=3
    )
    async with EmbeddedServer(settings) as server, Client(server.grpc_address) as c:
        await c.register("user1", PASSWORD)
        await c.register("user2", PASSWORD)
        with pytest.raises(ResourceExhausted) as info:
            await c.register("user3", PASSWORD)
        assert info.value.reason == "REGISTRATION_RATE_LIMITED"
    # Per address: another address still may, until the server-wide limit.
    settings = make_settings(
        tmp_path / "data2",
        registrations_per_ip_per_hour=2,
        registrations_per_hour=3,
        trusted_proxies=("127.0.0.1/32",),
    )
    async with EmbeddedServer(settings) as server:
        for i, address in enumerate(("192.0.2.1", "192.0.2.1", "192.0.2.2")):
            await register_from(server, f"user{i}", address)
        with pytest.raises(ResourceExhausted) as info:
            await register_from(server, "user3", "192.0.2.1")  # that address had its two
        assert "your address" in info.value.message
        with pytest.raises(ResourceExhausted) as info:  # a fresh address, past the total
            await register_from(server, "user9", "192.0.2.3")
        assert info.value.reason == "REGISTRATION_RATE_LIMITED"
        assert "this server" in info.value.message


async def test_invite_registration_needs_a_fresh_code_from_an_admin(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", registration="invite")
    async with EmbeddedServer(settings) as server:
        admin = await _register(server, "root")  # the first needs none, and becomes admin
        assert admin.is_admin and await admin.registration_policy() == "invite"
        async with Client(server.grpc_address) as c:
            with pytest.raises(PermissionDenied) as info:
                await c.register("bob", PASSWORD)
            assert info.value.reason == "INVITE_REQUIRED"
            made = await admin.admin("CreateInvites", adpb.CreateInvitesRequest(count=3))
            one, two, three = made.codes
            await c.register("bob", PASSWORD, invite_code=one)
            with pytest.raises(PermissionDenied) as info:
                await c.register("carol", PASSWORD, invite_code=one)  # used up
            assert info.value.reason == "BAD_INVITE"
            await admin.admin("RevokeInvite", adpb.RevokeInviteRequest(hint=two[:6]))
            with pytest.raises(PermissionDenied):
                await c.register("carol", PASSWORD, invite_code=two)
            await c.register("carol", PASSWORD, invite_code=three)
            listed = await admin.admin("ListInvites", adpb.ListInvitesRequest(include_done=True))
            assert len(listed.invites) == 3 and all(i.hint for i in listed.invites)
            assert not any(one.startswith(i.hint) and len(i.hint) > 6 for i in listed.invites)
        await admin.close()


async def test_closed_registration_and_the_admins_choice(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    async with EmbeddedServer(settings) as server:
        admin = await _register(server, "root")
        await admin.admin(
            "SetRegistration", adpb.SetRegistrationRequest(policy=apb.REGISTRATION_POLICY_CLOSED)
        )
        async with Client(server.grpc_address) as c:
            assert await c.registration_policy() == "closed"
            with pytest.raises(PermissionDenied) as info:
                await c.register("bob", PASSWORD)
            assert info.value.reason == "REGISTRATION_CLOSED"
            made = await admin.admin(
                "CreateUser", adpb.CreateUserRequest(username="bob", password=PASSWORD)
            )
            assert made.account.user.username == "bob" and not made.account.is_admin
            await c.login("bob", PASSWORD)
            shown = await admin.admin("GetRegistration", adpb.GetRegistrationRequest())
            assert (shown.policy, shown.chosen_by_admin) == (apb.REGISTRATION_POLICY_CLOSED, True)
            await admin.admin(
                "SetRegistration", adpb.SetRegistrationRequest(use_server_setting=True)
            )
            assert await c.registration_policy() == "open"
            await c.register("carol", PASSWORD)
        await admin.close()
