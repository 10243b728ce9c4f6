"""The soak in CI: 75 s of mixed chat against the embedded server and a cluster at once.

The long mode is `python -m bench.soak --minutes 30 --mode embedded|cluster`
(docs/reliability.md). Both must end with a valid history and every process's RSS less than
10 % above what it was after warm-up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.soak import Result, soak, summary
from devtools.dbservers import ServerUnavailable, require
from devtools.etcd import etcd_binary

MAX_GROWTH = 0.10
MINUTES = 1.25  # CI's size; the long mode is the command above
SAMPLE = 2.5  # seconds per sample: 30 in the run
WARMUP = 0.4  # the first 30 s, as long as the long mode's warm-up would be at 2 minutes


def held(result: Result) -> float:
    """Acknowledged messages per second after the warm-up (start-up is not the rate)."""
    after = [s.acked_per_s for s in result.samples if s.t > WARMUP * MINUTES * 60]
    return sum(after) / len(after)


@pytest.mark.timeout(600)
async def test_short_soaks_of_the_embedded_server_and_of_a_cluster(tmp_path: Path) -> None:
    """Both soaks at once (each load is light; they share nothing but the machine)."""
    try:
        require("postgresql")
    except ServerUnavailable as e:
        pytest.fail(f"the cluster soak needs PostgreSQL: {e}", pytrace=False)
    if etcd_binary() is None:
        pytest.fail("the cluster soak needs etcd: run scripts/install --all", pytrace=False)
    embedded, cluster = await asyncio.gather(
        soak("embedded", MINUTES, tmp_path / "embedded", rate=40, sample=SAMPLE, warmup=WARMUP),
        soak("cluster", MINUTES, tmp_path / "cluster", rate=30, sample=SAMPLE, warmup=WARMUP),
    )
    reports = [summary(r, MAX_GROWTH) for r in (embedded, cluster)]
    report = "\n".join(reports)
    print(report)

    assert embedded.valid, report
    assert held(embedded) >= 40 * 0.8, report  # the rate was held, near enough
    assert set(embedded.growth) == {"natter"}, report
    assert embedded.growth["natter"] < MAX_GROWTH, report
    assert (tmp_path / "embedded" / "soak.png").stat().st_size > 10_000
    assert len(embedded.samples) >= 20

    assert cluster.valid, report
    assert held(cluster) >= 30 * 0.8, report
    # Every process was measured: etcd, PostgreSQL and each natter role.
    assert {"etcd", "postgres", "message-1", "socket-1"} <= set(cluster.growth), report
    natter = {k: g for k, g in cluster.growth.items() if k not in ("etcd", "postgres")}
    assert all(g < MAX_GROWTH for g in natter.values()), report
