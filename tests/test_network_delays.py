"""Slow and broken links: every connection between hosts through Toxiproxy, with the history checked.

The cluster of tests/hosts.py with `proxy=True`: every address a process or client is
given — etcd, the database, each node's public and internal listener — is a proxy on the
proxy host, so every link (client to front door and socket server, socket server to
message_svc and back, every node to etcd and the database) crosses Toxiproxy. While the
workload sends, each proxy adds 200 ms of latency with 100 ms of jitter on the way back,
and every 1.5 s one proxy, in turn, resets every connection through it (TCP RST); every
fourth time it is instead disabled for a moment, so new connections are refused too. After
one round of every proxy the delays are removed and the rest is sent on clean links (with
200 ms on every link the cluster acknowledges only a few messages a second:
docs/reliability.md). The
kernel here has no `netem`, and Toxiproxy acts on connections, not single packets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.hosts import HostCluster, Run, require_hosts, run

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

LATENCY_MS, JITTER_MS = 200, 100


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HostCluster]:
    require_hosts(proxy=True)
    # The default lease TTL (5 s): with 200-300 ms on every link, 2 s leaves a keepalive too
    # little room to reconnect after its connection to etcd was reset.
    root = tmp_path_factory.mktemp("proxied")
    async with HostCluster(root, sockets=3, proxy=True, ttl=5) as c:
        yield c


async def test_200_ms_jittered_links_with_reset_and_refused_connections(
    cluster: HostCluster, request: pytest.FixtureRequest
) -> None:
    messages = int(request.config.getoption("fault_messages"))
    c = cluster
    tp = c.toxiproxy
    assert tp is not None
    proxies = sorted(tp.proxies)

    async def fault(r: Run) -> None:
        await c.note(f"{LATENCY_MS} ms ± {JITTER_MS} ms on every link")
        for name in proxies:
            await tp.toxic(name, "latency", latency=LATENCY_MS, jitter=JITTER_MS)
        before = await r.stats()
        # One round of the proxies, each cut in turn, every 1.5 s, while the workload sends.
        for cuts, name in enumerate(proxies, 1):
            if cuts % 4 == 0:
                await tp.enable(name, False)  # refused and reset
                await asyncio.sleep(0.5)  # the fault's own rhythm
                await tp.enable(name, True)
            else:
                toxic = await tp.toxic(name, "reset_peer", timeout=0, name="cut")
                await asyncio.sleep(0.2)
                await tp.remove_toxic(name, toxic)
            await asyncio.sleep(1.5)
        after = await r.stats()
        assert after["connects"] > before["connects"], "no device lost its stream"
        assert after["acked"] > before["acked"], "nothing acknowledged through the delays"
        for name in proxies:
            await tp.clear(name)
        await c.note(f"{len(proxies)} links cut; delays removed")

    r = await run(c, messages, fault, rate=60)
    stats = r.final
    assert stats is not None
    assert stats["retries"] > 0 or stats["connects"] > len(stats["nodes"]), stats
