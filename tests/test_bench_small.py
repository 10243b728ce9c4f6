"""The attachment and search benchmarks, run small: the commands in docs/benchmarks.md keep
working, and their figures come out (the full-size runs are recorded in bench-results.md)."""

from __future__ import annotations

import argparse

from bench import media, search


async def test_search_bench_runs_small() -> None:
    args = argparse.Namespace(
        messages=3000, users=60, threads=200, vocabulary=2000, queries=5, seed=2, database_url=None
    )
    rows = dict(await search.measure(args))
    assert rows["store"] == "sqlite"
    assert "3,000" in rows["messages stored"]
    assert rows["all queries: p50 / p99"].endswith(" ms")


async def test_media_bench_runs_small() -> None:
    rows = dict(await media.measure(argparse.Namespace(megabytes=2, rounds=1)))
    assert rows["upload: create, PATCH chunks, complete"].split()[0].replace(",", "").isdigit()
    assert rows["12 MP JPEG"].startswith("4000x3000")
