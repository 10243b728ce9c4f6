"""The command line for safety and administration: block, report, devices, password,
delete-account, and `natter admin` over an admin's token and over the data folder."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from app.embedded import EmbeddedServer
from natter.sdk import Client
from tests.conftest import PASSWORD
from tests.procs import Cli

NEW = "an even better secret"

# The command line's behaviour, not the store's (the store contract suite and the
# end-to-end tests cover every engine): once, on SQLite. Each test starts 10 to 30 processes
# of the command, a second or more each on a loaded 2-core machine: a longer timeout.
pytestmark = [pytest.mark.sqlite_only, pytest.mark.timeout(300)]


async def test_people_block_report_and_manage_their_devices_from_the_command_line(
    tmp_path: Path, server: EmbeddedServer
) -> None:
    cli = Cli(tmp_path / "home", server.grpc_address, PASSWORD, {"NATTER_NEW_PASSWORD": NEW})
    await cli.run("root", "register", "root")  # the first account: the admin
    for name in ("alice", "bob"):
        await cli.run(name, "register", name)
        await cli.run(name, "login", name)
    await cli.run("alice2", "login", "alice", "--device", "laptop")
    await cli.run("bob", "send", "alice", "buy cheap pills")
    [blocked] = await cli.json("alice", "block", "bob")
    assert blocked == {"type": "blocked", "username": "bob"}
    assert await cli.json("alice", "blocked") == [
        {"type": "blocked", "username": "bob", "display_name": "bob"}
    ]
    refused = await cli.run("bob", "send", "alice", "hello?", "--timeout", "5", check=False)
    assert refused.returncode == 1 and "cannot be delivered" in refused.stderr
    [reported] = await cli.json("alice", "report", "bob", "--reason", "spam", "--thread", "bob")
    assert reported["type"] == "reported" and reported["report_id"] > 0
    await cli.run("alice", "unblock", "bob")
    assert await cli.json("alice", "blocked") == []
    # Devices: listed with platform and last use; one logged out by id, then all others.
    devices = await cli.json("alice", "devices")
    assert [(x["name"], x["platform"], x["current"]) for x in devices] == [
        ("cli-alice", "cli", True),
        ("laptop", "cli", False),
    ]
    assert all(x["last_active"] for x in devices)
    laptop = devices[1]["device_id"]
    [out] = await cli.json("alice", "devices", "logout", str(laptop))
    assert out["device_ids"] == [laptop]
    gone = await cli.run("alice2", "devices", check=False)
    assert gone.returncode == 1
    await cli.run("alice2", "login", "alice", "--device", "laptop")
    [out] = await cli.json("alice", "devices", "logout", "--others")
    assert len(out["device_ids"]) == 1
    # The password: the other devices go, the new one works, the old one does not.
    await cli.run("alice2", "login", "alice", "--device", "laptop")
    [changed] = await cli.json("alice", "password")
    assert changed["type"] == "password_changed" and len(changed["devices_logged_out"]) == 1
    async with Client(server.grpc_address) as c:
        await c.login("alice", NEW)
    # Deleting needs --yes, and the password (now the new one).
    no = await cli.run("bob", "delete-account", check=False)
    assert no.returncode == 1 and "--yes" in no.stderr
    await cli.run("bob", "delete-account", "--yes")
    again = await cli.run("bob", "login", "bob", check=False)
    assert again.returncode == 1


async def test_natter_admin_over_an_admins_token(tmp_path: Path, server: EmbeddedServer) -> None:
    cli = Cli(tmp_path / "home", server.grpc_address, PASSWORD, {"NATTER_NEW_PASSWORD": NEW})
    for name in ("root", "alice", "bob"):
        await cli.run(name, "register", name)
        await cli.run(name, "login", name)
    # Not an admin: refused, and said so.
    denied = await cli.run("alice", "admin", "users", "list", check=False)
    assert denied.returncode == 1 and "only the server's admins" in denied.stderr
    # Reports: listed, shown with their messages, resolved.
    await cli.run("alice", "send", "bob", "you are horrible")
    await cli.run("bob", "report", "alice", "--reason", "harassment", "--thread", "alice")
    [r] = await cli.json("root", "admin", "reports", "list")
    assert (r["reporter"], r["subject"], r["reason"]) == ("bob", "alice", "harassment")
    shown = await cli.json("root", "admin", "reports", "show", str(r["report_id"]))
    assert [m["text"] for m in shown if m["type"] == "reported_message"] == ["you are horrible"]
    await cli.run("root", "admin", "reports", "resolve", str(r["report_id"]), "--note", "warned")
    assert await cli.json("root", "admin", "reports", "list") == []
    accounts = await cli.json("root", "admin", "users", "list")
    assert [(a["username"], a["admin"]) for a in accounts] == [
        ("root", True),
        ("alice", False),
        ("bob", False),
    ]
    assert [a["username"] for a in await cli.json("root", "admin", "users", "list", "ali")] == [
        "alice"
    ]
    shown = await cli.json("root", "admin", "users", "show", "bob")
    assert shown[0]["username"] == "bob" and shown[1]["type"] == "device"
    await cli.run("root", "admin", "users", "disable", "bob")
    locked = await cli.run("bob", "login", "bob", check=False)
    assert locked.returncode == 1 and "disabled" in locked.stderr
    await cli.run("root", "admin", "users", "enable", "bob")
    [reset] = await cli.json("root", "admin", "users", "reset-password", "bob", "--generate")
    async with Client(server.grpc_address) as c:
        await c.login("bob", reset["password"])
    await cli.run("root", "admin", "users", "promote", "alice")
    await cli.run("alice", "admin", "users", "list")  # now she may
    await cli.run("root", "admin", "users", "demote", "alice")
    # Every action is in the audit log, with who did it.
    audit = await cli.json("root", "admin", "audit", "--limit", "100")
    actions = {(e["actor"], e["action"]) for e in audit}
    for action in (
        "users.disable",
        "users.enable",
        "users.reset_password",
        "users.promote",
        "users.demote",
        "reports.resolve",
    ):
        assert ("root", action) in actions, action
    assert ("alice", "users.list") in actions


async def test_natter_admin_manages_devices_invites_registration_and_accounts(
    tmp_path: Path, server: EmbeddedServer
) -> None:
    cli = Cli(tmp_path / "home", server.grpc_address, PASSWORD, {"NATTER_NEW_PASSWORD": NEW})
    for name in ("root", "carol"):
        await cli.run(name, "register", name)
        await cli.run(name, "login", name)
    await cli.run("root", "admin", "devices", "revoke", "carol")
    assert (await cli.run("carol", "devices", check=False)).returncode == 1
    codes = await cli.json("root", "admin", "invites", "create", "--count", "2", "--note", "x")
    assert len(codes) == 2 and all(len(c["code"]) >= 12 for c in codes)
    listed = await cli.json("root", "admin", "invites", "list")
    assert {i["hint"] for i in listed} == {c["code"][:6] for c in codes}
    await cli.run("root", "admin", "invites", "revoke", codes[0]["code"][:6])
    assert len(await cli.json("root", "admin", "invites", "list")) == 1
    await cli.run("root", "admin", "registration", "invite")
    [policy] = await cli.json("root", "admin", "registration")
    assert (policy["policy"], policy["chosen_by_admin"]) == ("invite", True)
    no_code = await cli.run("dave", "register", "dave", check=False)
    assert no_code.returncode == 1 and "invite code" in no_code.stderr
    await cli.run("dave", "register", "dave", "--invite", codes[1]["code"])
    await cli.run("root", "admin", "registration", "default")
    await cli.run("root", "admin", "users", "create", "erin", "--name", "Erin")
    async with Client(server.grpc_address) as c:
        await c.login("erin", NEW)
    await cli.run("root", "admin", "users", "delete", "carol", "--yes")
    # Every action is in the audit log, with who did it.
    audit = await cli.json("root", "admin", "audit", "--limit", "100")
    actions = {(e["actor"], e["action"]) for e in audit}
    for action in (
        "users.create",
        "users.delete",
        "devices.revoke",
        "invites.create",
        "invites.revoke",
        "registration.set",
    ):
        assert ("root", action) in actions, action


async def test_natter_admin_over_the_data_folder_names_the_first_admin(
    tmp_path: Path, server: EmbeddedServer
) -> None:
    cli = Cli(tmp_path / "home", server.grpc_address, PASSWORD)
    for name in ("alice", "bob"):
        await cli.run(name, "register", name)
        await cli.run(name, "login", name)
    data = str(server.settings.data_dir)
    # While the server runs, straight on its database: bob becomes an admin.
    await cli.run("any", "admin", "--data", data, "users", "promote", "bob")
    await cli.run("bob", "admin", "users", "list")
    [shown] = [
        x
        for x in await cli.json("any", "admin", "--data", data, "users", "show", "bob")
        if x["type"] == "account"
    ]
    assert shown["admin"] is True
    audit = await cli.json("any", "admin", "--data", data, "audit")
    me = f"local:{getpass.getuser()}"
    assert (me, "users.promote") in {(e["actor"], e["action"]) for e in audit}
    # A device revoked over the data folder is refused at once by the server.
    await cli.run("any", "admin", "--data", data, "devices", "revoke", "alice")
    assert (await cli.run("alice", "devices", check=False)).returncode == 1
