"""The soak in CI: two minutes of mixed chat against the embedded server and against a cluster.

The long mode is `python -m bench.soak --minutes 30 --mode embedded|cluster`
(docs/reliability.md). Both must end with a valid history and every process's RSS less than
10 % above what it was after warm-up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak, summary
from devtools.dbservers import ServerUnavailable, require
from devtools.etcd import etcd_binary

MAX_GROWTH = 0.10


@pytest.mark.timeout(600)
async def test_two_minute_soak_of_the_embedded_server(tmp_path: Path) -> None:
    result = await soak("embedded", 2.0, tmp_path, rate=40)
    report = summary(result, MAX_GROWTH)
    print(report)
    assert result.valid, report
    assert result.acked >= 2 * 60 * 40 * 0.8, report  # the rate was held, near enough
    assert set(result.growth) == {"natter"}, report
    assert result.growth["natter"] < MAX_GROWTH, report
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert len(result.samples) >= 20


@pytest.mark.timeout(600)
async def test_two_minute_soak_of_a_cluster(tmp_path: Path) -> None:
    try:
        require("postgresql")
    except ServerUnavailable as e:
        pytest.fail(f"the cluster soak needs PostgreSQL: {e}", pytrace=False)
    if etcd_binary() is None:
        pytest.fail("the cluster soak needs etcd: run scripts/install --all", pytrace=False)
    result = await soak("cluster", 2.0, tmp_path, rate=30)
    report = summary(result, MAX_GROWTH)
    print(report)
    assert result.valid, report
    assert result.acked >= 2 * 60 * 30 * 0.8, report
    # Every process was measured: etcd, PostgreSQL and each natter role.
    assert {"etcd", "postgres", "message-1", "socket-1"} <= set(result.growth), report
    natter = {k: g for k, g in result.growth.items() if k not in ("etcd", "postgres")}
    assert all(g < MAX_GROWTH for g in natter.values()), report
