"""Push settings from the command line: mute and unmute for a while or forever, mutes in the
thread list, the privacy mode, a gateway token, and turning push off for the device."""

from __future__ import annotations

from pathlib import Path

from devtools.pushservice import PushService
from tests.conftest import PASSWORD
from tests.helpers import eventually
from tests.procs import Cli, natter_server
from tests.test_push_faults import push_env


async def test_mute_preview_and_gateway_from_the_command_line(tmp_path: Path) -> None:
    async with PushService() as ps:
        env = {**push_env(ps, 0.3), "NATTER_PUSH_GATEWAY_URLS": ps.gateway_url}
        async with natter_server(tmp_path / "data", env) as srv:
            cli = Cli(tmp_path / "home", srv.grpc_address, PASSWORD)
            for name in ("alice", "bob"):
                await cli.run(name, "register", name, "--name", name.title())
                await cli.run(name, "login", name)
            [sent] = await cli.json("alice", "send", "bob", "hi")
            thread = sent["thread"]

            [muted] = await cli.json("bob", "mute", "alice", "--for", "8h")
            assert muted["muted"] is True and muted["mute_end"]
            [row] = await cli.json("bob", "threads")
            assert row["thread"] == thread and row["muted"] is True and row["mute_end"]
            assert "[muted until " in (await cli.run("bob", "threads")).stdout
            [forever] = await cli.json("bob", "mute", f"#{thread}")
            assert forever["muted"] is True and forever["mute_end"] is None
            assert "[muted] hi" in (await cli.run("bob", "threads")).stdout
            [unmuted] = await cli.json("bob", "unmute", "alice")
            assert unmuted["muted"] is False
            assert "muted" not in (await cli.run("bob", "threads")).stdout
            bad = await cli.run("bob", "mute", "alice", "--for", "soon", check=False)
            assert bad.returncode == 2 and "not a duration" in bad.stderr

            [status] = await cli.json("bob", "push")
            assert status["target"] == "none" and status["preview"] == "full"
            assert status["gateways"] == [ps.gateway_url] and status["vapid_public_key"]
            [reg] = await cli.json("bob", "push", "gateway", ps.gateway_url, "org.test", "tok-1")
            assert reg["target"].startswith("gateway ")
            [mode] = await cli.json("bob", "push", "preview", "sender")
            assert mode["preview"] == "sender"
            await cli.run("alice", "send", "bob", "the secret")
            await eventually(lambda: ps.to("tok-1"), timeout=15)
            note = ps.to("tok-1")[0].note
            assert note["sender"] == "alice" and "content" not in note
            [off] = await cli.json("bob", "push", "off")
            assert off["target"] == "none"
