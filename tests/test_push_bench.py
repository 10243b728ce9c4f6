"""bench.push, small: CI runs the benchmark end to end; the full size is `python -m bench.push`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
async def test_the_push_benchmark_runs_small() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.push",
        "--members",
        "30",
        "--rounds",
        "1",
        "--bursts",
        "2",
        "--no-record",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 170)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "problems at the push service  0" in text
    assert "60 pushes, 2 bursts" in text
