"""Toxiproxy (Shopify's TCP proxy for faults) in a test host: proxies, and toxics on them.

The kernel here has no `netem`, so delay, jitter, bandwidth limits and reset connections go
through Toxiproxy v2.12.0: every connection between two test hosts is made to a proxy on
the proxy host, which forwards it to the real server and applies the toxics of that proxy.
`scripts/install --all` builds it from the Go module proxy into `.cache/go/bin` (GOPATH
and GOCACHE under `.cache/go`, so the second build is a no-op).

    proxy = ToxiproxyServer(host=net.add("proxy"))
    await proxy.start()
    listen = await proxy.add("etcd", etcd.endpoint)             # "10.213.0.9:21000"
    await proxy.toxic("etcd", "latency", latency=200, jitter=100)
    await proxy.toxic("etcd", "reset_peer", toxicity=1.0, timeout=0)  # cut every connection
    await proxy.clear("etcd")

The API is called from a thread inside the proxy's host (`Host.call`), like every probe.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from devtools.netns import Host
from devtools.processes import ServerProcess, ServerUnavailable

VERSION = "v2.12.0"
ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / ".cache" / "go" / "bin" / "toxiproxy-server"
INSTALL_HINT = (
    "run scripts/install --all (it builds github.com/Shopify/toxiproxy/v2/cmd/server@"
    f"{VERSION} with go into .cache/go/bin)"
)
API_PORT = 8474
FIRST_PORT = 21000


def toxiproxy_binary() -> str | None:
    """The toxiproxy-server executable: the one scripts/install built, or one on PATH."""
    if BUILT.exists():
        return str(BUILT)
    return shutil.which("toxiproxy-server")


class ToxiproxyServer(ServerProcess):
    """toxiproxy-server listening for its API on its host's address, port 8474."""

    name = "toxiproxy"
    stop_timeout = 5.0
    not_ready = (aiohttp.ClientError, OSError, TimeoutError, ValueError)

    def __init__(self, host: Host, root: Path | None = None) -> None:
        found = toxiproxy_binary()
        if found is None:
            raise ServerUnavailable(f"toxiproxy-server not found; {INSTALL_HINT}")
        self.binary = found
        super().__init__(root, host=host)
        self.port = 0
        self._next = FIRST_PORT
        self.proxies: dict[str, str] = {}  # name -> listen address

    @property
    def api(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def _ports_chosen(self) -> bool:
        return self.port != 0

    def _choose_ports(self) -> None:
        self.port = API_PORT

    def _argv(self) -> list[str]:
        return [self.binary, "-host", self.bind, "-port", str(self.port)]

    async def _probe(self) -> bool:
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.api}/version") as resp,
        ):
            return resp.status == 200

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.host is not None

        async def go() -> Any:
            timeout = aiohttp.ClientTimeout(total=10.0)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(method, f"{self.api}{path}", json=body) as resp,
            ):
                text = await resp.text()
                if resp.status >= 300:
                    raise RuntimeError(f"toxiproxy {method} {path}: {resp.status} {text}")
                return json.loads(text) if text.strip() else None

        return await self.host.call(go)

    async def add(self, name: str, upstream: str) -> str:
        """A proxy to `upstream` (host:port); returns the address it listens on."""
        listen = f"{self.bind}:{self._next}"
        self._next += 1
        await self._call(
            "POST",
            "/proxies",
            {"name": name, "listen": listen, "upstream": upstream, "enabled": True},
        )
        self.proxies[name] = listen
        return listen

    async def toxic(
        self,
        proxy: str,
        kind: str,
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str = "",
        **attributes: int,
    ) -> str:
        """Add a toxic (latency, bandwidth, slow_close, timeout, reset_peer, slicer, ...)."""
        toxic = name or f"{kind}_{stream}"
        await self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {
                "name": toxic,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return toxic

    async def remove_toxic(self, proxy: str, toxic: str) -> None:
        await self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    async def enable(self, proxy: str, enabled: bool) -> None:
        """A disabled proxy closes its connections and refuses new ones until enabled."""
        await self._call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    async def clear(self, proxy: str) -> None:
        for t in await self._call("GET", f"/proxies/{proxy}/toxics"):
            await self.remove_toxic(proxy, t["name"])

    async def reset(self) -> None:
        """Every proxy enabled, every toxic gone."""
        await self._call("POST", "/reset")
