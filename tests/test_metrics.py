"""Metrics: /metrics on the HTTP listener (and metrics_addr), what it reports, who may read
it, turning it off, and the delivery canary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.canary import Canary
from app.embedded import EmbeddedServer
from bench import hops
from devtools.ports import free_port
from natter.errors import NotFound
from natter.metrics import HOP_NAMES, Metrics
from natter.sdk import Connection
from natter.settings import Settings
from natter.v1 import admin_service_pb2 as adpb
from natter.v1 import socket_service_pb2 as spb
from socket_svc.web import _private
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.conftest import test_settings as make_settings
from tests.helpers import collect, eventually
from tests.procs import RawStream

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def scrape(http: aiohttp.ClientSession, port: int, token: str = "") -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as res:
        assert res.status == 200, await res.text()
        assert res.headers["Content-Type"].startswith("text/plain")
        text = await res.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    assert found, f"no sample {name} {labels}"
    return sum(found)


@pytest.fixture
def settings(tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        database_url=store_url,
        message_log=message_log_url,
        frames_per_second=50,
        frame_burst=20,
        heartbeat_interval_seconds=0.2,
    )


async def test_metrics_report_the_delivery_health_of_the_server(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer, http: aiohttp.ClientSession
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    ca, cb = await connect(alice), await connect(bob)
    for i in range(5):
        await ca.send(f"hi {i}", recipient="bob")
    await collect(cb, 5)
    group = await alice.create_group("g", ["bob", "carol"])
    await ca.send("to the group", thread_id=group.thread_id)
    await collect(cb, 1)
    with pytest.raises(Exception):  # noqa: B017 - refused: empty text
        await ca.send(" ", recipient="bob")
    # A backlog: carol's device receives and never acks.
    slow = Connection(carol, auto_ack=False)
    await slow.start()
    await ca.send("unread", thread_id=group.thread_id)
    await eventually(lambda: sum(s.backlog()[0] for s in server.hub.by_device.values()) >= 1)
    # A flood the frame budget refuses.
    raw = RawStream(await user("bob", device="flood"))
    await raw.hello()
    for _ in range(60):
        await raw.write(spb.ClientFrame(heartbeat=spb.Heartbeat()))
    await raw.until("error")
    m = await scrape(http, server.http_port)
    assert value(m, "natter_connected_devices") == 4  # alice, bob's two devices, carol
    assert value(m, "natter_streams", transport="grpc", state="open") == 4
    assert value(m, "natter_sends_total", outcome="stored") >= 7
    assert value(m, "natter_sends_total", outcome="refused") >= 1
    assert value(m, "natter_send_ack_seconds_count") >= 7
    assert value(m, "natter_deliver_seconds_count") >= 6
    assert value(m, "natter_backlog_messages") >= 1
    assert value(m, "natter_backlog_oldest_seconds") > 0
    assert value(m, "natter_backlog_device_max_messages") >= 1
    assert value(m, "natter_group_fanout_nodes_count") >= 2
    assert value(m, "natter_group_fanout_devices_sum") >= 2
    assert value(m, "natter_presence_changes_total", state="online") >= 1
    assert value(m, "natter_rate_limited_total", limit="frames") >= 1
    assert value(m, "natter_commit_batch_messages_sum") >= 7
    assert value(m, "natter_commit_seconds_count") >= 1
    assert value(m, "natter_db_commit_seconds_count") >= 1
    assert ("natter_db_pool_connections", (("state", "in_use"),)) in m
    assert value(m, "natter_logins_total", outcome="ok") >= 3
    raw.cancel()
    await slow.close()


async def test_every_hop_of_the_send_path_is_timed_once_per_message(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer, http: aiohttp.ClientSession
) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca, cb = await connect(alice), await connect(bob)
    before = await scrape(http, server.http_port)
    assert not any(n == "natter_hop_seconds_count" and v for (n, _), v in before.items())
    for i in range(5):
        await ca.send(f"hop {i}", recipient="bob")
    await collect(cb, 5)

    async def counted() -> bool:
        m = await scrape(http, server.http_port)
        return all(value(m, "natter_hop_seconds_count", hop=h) == 5 for h in HOP_NAMES)

    await eventually(counted, message="every hop observed once for each of the 5 messages")
    async with http.get(f"http://127.0.0.1:{server.http_port}/metrics") as res:
        window = hops.parse(await res.text())
    whole = window["send->ack (socket edge)"]
    assert whole.count == 5
    # The hops inside one send add up to no more than its send->ack time at the edge.
    inside = ("edge_queue", "send_call")
    assert sum(window[h].total for h in inside) <= whole.total * 1.01 + 1e-3
    for h in HOP_NAMES:
        assert 0 <= window[h].quantile(0.5) <= window[h].quantile(0.99) <= 5.0


async def test_metrics_need_a_token_when_one_is_set_and_a_private_address_otherwise(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = make_settings(tmp_path / "data", metrics_token="s3cret")
    async with EmbeddedServer(settings) as srv:
        url = f"http://127.0.0.1:{srv.http_port}/metrics"
        async with http.get(url) as res:
            assert res.status == 401
        async with http.get(url, headers={"Authorization": "Bearer wrong"}) as res:
            assert res.status == 401
        assert value(await scrape(http, srv.http_port, "s3cret"), "natter_connected_devices") == 0
    assert _private("127.0.0.1") and _private("10.1.2.3") and _private("::1")
    assert not _private("8.8.8.8") and not _private("2001:4860::1") and not _private("")


async def test_metrics_can_be_turned_off_and_served_on_a_port_of_their_own(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with EmbeddedServer(make_settings(tmp_path / "off", metrics_enabled=False)) as srv:
        async with http.get(f"http://127.0.0.1:{srv.http_port}/metrics") as res:
            assert res.status == 404
        assert not srv.metrics.enabled and srv.metrics.exposition() == b""
    port = free_port()
    settings = make_settings(tmp_path / "own", metrics_addr=f"127.0.0.1:{port}")
    async with EmbeddedServer(settings) as srv:
        assert srv.metrics_server is not None and srv.metrics_server.port == port
        assert "natter_connected_devices" in {n for n, _ in await scrape(http, port)}


async def test_the_delivery_canary_probes_end_to_end_and_stays_out_of_sight(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = make_settings(tmp_path / "data", canary_interval_seconds=0.1)
    async with EmbeddedServer(settings) as srv:
        assert srv.canary is not None
        await eventually(lambda: srv.canary is not None and srv.canary.ok >= 3, timeout=20)
        m = await scrape(http, srv.http_port)
        assert value(m, "natter_canary_probes_total", result="ok") >= 3
        assert value(m, "natter_canary_latency_seconds_count") >= 3
        assert value(m, "natter_canary_last_success_timestamp_seconds") > 0
        from natter.sdk import Client

        async with Client(srv.grpc_address) as c:
            await c.register("admin", PASSWORD)
            await c.login("admin", PASSWORD)
            assert c.is_admin  # the canary did not take the first account's place
            assert await c.discover(["~canary"]) == {}
            with pytest.raises(NotFound):
                await c.add_contact("~canary")
            listed = await c.admin("ListUsers", adpb.ListUsersRequest())
            assert [a.user.username for a in listed.accounts] == ["admin"]


async def test_the_canary_counts_a_probe_that_cannot_be_sent_as_failed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", canary_timeout_seconds=0.5)
    async with EmbeddedServer(settings) as srv:
        metrics = Metrics()
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        canary = Canary(srv.store, settings.replace(canary_interval_seconds=0.05), metrics, dead)
        canary.start()
        try:
            await eventually(lambda: canary.probes >= 2, timeout=20)
        finally:
            await canary.stop()
        text = metrics.exposition().decode()
        assert 'natter_canary_probes_total{result="failed"}' in text
        assert canary.ok == 0


def test_with_metrics_off_every_instrument_records_nothing() -> None:
    from natter.metrics import NO_METRICS

    NO_METRICS.sends.labels("stored").inc()
    NO_METRICS.deliver_seconds.observe(1.0)
    assert NO_METRICS.exposition() == b""
    on = Metrics()
    on.sends.labels("stored").inc()
    assert b'natter_sends_total{outcome="stored"} 1.0' in on.exposition()


DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"


async def test_the_grafana_dashboard_names_only_metrics_the_server_exports(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    import json
    import re

    dashboard = json.loads(await asyncio.to_thread(DASHBOARD.read_text))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]

    def base(name: str) -> str:  # a family's name: without the sample's suffix
        return re.sub(r"_(bucket|sum|count|total)$", "", name)

    named = {base(m) for e in exprs for m in re.findall(r"natter_[a-z_]+", e)}
    async with (
        EmbeddedServer(make_settings(tmp_path / "data")) as srv,
        http.get(f"http://127.0.0.1:{srv.http_port}/metrics") as res,
    ):
        text = await res.text()
    families = {base(f.name) for f in text_string_to_metric_families(text)}
    assert named and named <= families, named - families


async def test_natter_serve_freezes_its_start_up_heap_and_times_collector_pauses(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    from tests.procs import natter_server

    async with natter_server(tmp_path / "data") as srv:

        async def settled() -> Samples | None:
            samples = await scrape(http, srv.http_port)
            frozen = samples.get(("natter_gc_frozen_objects", ()), 0.0)
            return samples if frozen > 0 else None

        await eventually(settled, message="natter serve froze nothing")
        samples = await scrape(http, srv.http_port)
    # Start-up builds far more than a handful of objects: modules, descriptors, pools.
    assert value(samples, "natter_gc_frozen_objects") > 10_000
    # The one full collection before the freeze is timed, like every pass after it.
    assert value(samples, "natter_gc_pause_seconds_count", generation="2") >= 1
    assert value(samples, "natter_gc_pause_seconds_count", generation="0") >= 1
