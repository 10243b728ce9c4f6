"""A real single-member etcd on loopback: own data folder, free ports, kill -9 and restart.

`async with EtcdServer() as etcd:` runs one in a temporary folder for a test; `etcd.endpoint`
is `host:port` for clients. The local cluster (devtools/cluster.py) names a folder and ports
instead, and the server outlives the command that started it (devtools/processes.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import aiohttp

from devtools.netns import Host
from devtools.ports import free_port
from devtools.processes import ServerProcess, ServerUnavailable

ETCD_CANDIDATES = ("/usr/bin/etcd", "/usr/local/bin/etcd")
INSTALL_HINT = "run scripts/install --all (Debian: apt-get install -y etcd-server)"


def etcd_binary() -> str | None:
    """The etcd executable (`apt-get install -y etcd-server` provides it), or None."""
    found = shutil.which("etcd")
    if found:
        return found
    for path in ETCD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


class EtcdServer(ServerProcess):
    """One single-member etcd on 127.0.0.1.

    `kill()` sends SIGKILL; `restart()` starts it again on the same ports and data (or an
    empty data folder with `wipe=True`); `remove()` ends it and deletes its folder.
    """

    name = "etcd"
    stop_timeout = 5.0
    not_ready = (aiohttp.ClientError, TimeoutError, ValueError)

    def __init__(
        self,
        root: Path | None = None,
        *,
        client_port: int = 0,
        peer_port: int = 0,
        log_path: Path | None = None,
        host: Host | None = None,
    ) -> None:
        found = etcd_binary()
        if found is None:
            raise ServerUnavailable(f"etcd not found; {INSTALL_HINT}")
        self.binary = found
        super().__init__(root, log_path=log_path, host=host)
        self.data_dir = self.root / "data"
        self.client_port = client_port
        self.peer_port = peer_port

    @property
    def endpoint(self) -> str:
        return f"{self.bind}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.bind}:{self.client_port}"

    def _ports_chosen(self) -> bool:
        return self.client_port != 0

    def _choose_ports(self) -> None:
        self.client_port, self.peer_port = free_port(), free_port()

    def _argv(self) -> list[str]:
        peer_url = f"http://{self.bind}:{self.peer_port}"
        return [
            self.binary,
            "--name", "natter",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"natter={peer_url}",
            # One member: a short election timeout only shortens start-up (about 1 s with
            # the default 1000 ms) and cannot cause elections, as there is no peer.
            "--heartbeat-interval", "25",
            "--election-timeout", "250",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip

    async def _probe(self) -> bool:
        """/health says it serves."""
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.client_url}/health") as resp,
        ):
            body = await resp.json(content_type=None)
            return resp.status == 200 and body.get("health") == "true"

    async def restart(self, *, crash: bool = True, wipe: bool = False) -> None:
        """Stop (kill -9 unless crash=False), then start on the same ports (`wipe`: no data)."""
        if wipe:
            await (self.kill() if crash else self.stop())
            shutil.rmtree(self.data_dir, ignore_errors=True)
        await super().restart(crash=crash)
