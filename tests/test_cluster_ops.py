"""Operating a cluster: every process exports /metrics on its own port, one request id
follows a send from the socket server to message_svc, the delivery canary runs end to end
through Locate and a socket server, and a logout reaches the stream on another process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from natter.errors import Unauthenticated
from natter.sdk import Client, Connection, Disconnected
from tests.cluster import Cluster, RoleProc, running_cluster
from tests.conftest import PASSWORD
from tests.helpers import collect, eventually, gather_events

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    env = {"NATTER_LOG_LEVEL": "DEBUG", "NATTER_CANARY_INTERVAL_SECONDS": "0.5"}
    async with running_cluster(tmp_path_factory.mktemp("ops"), env, sockets=1, messages=1) as c:
        yield c


async def metrics(http: aiohttp.ClientSession, p: RoleProc) -> dict[str, float]:
    """Every sample of one process, summed over labels, by sample name."""
    async with http.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as res:
        assert res.status == 200, p.node_id
        text = await res.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def log_records(p: RoleProc) -> list[dict[str, object]]:
    out = []
    for line in p.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


async def test_each_process_exports_metrics_and_the_canary_delivers(cluster: Cluster) -> None:
    front = cluster.of("message")[0].public_addr
    a, b = Client(front), Client(front)
    await a.register("alice", PASSWORD)
    await b.register("bob", PASSWORD)
    await a.login("alice", PASSWORD)
    await b.login("bob", PASSWORD)
    ca, cb = await Connection(a).start(), await Connection(b).start()
    group = await a.create_group("g", ["bob"])
    await ca.send("hello group", thread_id=group.thread_id)
    await ca.send("hello bob", recipient="bob")
    await collect(cb, 2, timeout=20)
    async with aiohttp.ClientSession() as http:

        async def exported() -> bool:
            m = {p.role: await metrics(http, p) for p in cluster.procs}
            return (
                m["message"].get("natter_sends_total", 0) >= 2
                and m["message"].get("natter_canary_latency_seconds_count", 0) >= 1
                and m["socket"].get("natter_connected_devices", 0) >= 2
                and m["socket"].get("natter_deliver_seconds_count", 0) >= 1
                and m["channel"].get("natter_group_fanout_nodes_count", 0) >= 1
                and m["presence"].get("natter_presence_changes_total", 0) >= 1
            )

        await eventually(exported, timeout=60)
        m = await metrics(http, cluster.of("message")[0])
        assert m["natter_canary_last_success_timestamp_seconds"] > 0
    for conn in (ca, cb):
        await conn.close()
    for c in (a, b):
        await c.close()


async def test_one_request_id_follows_a_send_across_processes(cluster: Cluster) -> None:
    front = cluster.of("message")[0].public_addr
    c = Client(front)
    await c.register("carol", PASSWORD)
    await c.login("carol", PASSWORD)
    conn = await Connection(c).start()
    await conn.send("trace me", recipient="carol")
    await conn.close()
    await c.close()
    socket_ids = {
        r["request_id"]
        for r in log_records(cluster.of("socket")[0])
        if "SocketService/Connect" in str(r["message"]) and "request_id" in r
    }
    message_ids = {
        r.get("request_id")
        for r in log_records(cluster.of("message")[0])
        if "MessageInternalService/SendMessages" in str(r["message"])
    }
    # The stream's id on the socket server is the id of its SendMessages on message_svc.
    assert socket_ids & message_ids


async def test_locate_needs_a_token_and_a_logout_closes_a_stream_elsewhere(
    cluster: Cluster,
) -> None:
    front = cluster.of("message")[0].public_addr
    async with Client(front) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.locate("alice")
    laptop, phone = Client(front), Client(front)
    await laptop.login("alice", PASSWORD, "laptop")
    await phone.login("alice", PASSWORD, "phone")
    assert await phone.locate("alice") == cluster.of("socket")[0].public_addr
    c_phone = await Connection(phone).start()
    await laptop.revoke_device(phone.device_id)  # on a message node; the stream is elsewhere
    [ev] = await gather_events(
        c_phone, lambda e: isinstance(e, Disconnected) and e.final, 1, 20, "the logout"
    )
    assert "logged out" in ev.reason
    await c_phone.close()
    for x in (laptop, phone):
        await x.close()
