"""The bench's server under tracemalloc: SIGUSR1 writes a snapshot, `diff` says what grew where."""

from __future__ import annotations

import linecache
import signal
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

FRAMES = 12


def run(prefix: str, argv: Sequence[str]) -> None:
    """`natter` with tracemalloc on; each SIGUSR1 writes PREFIX.N (N = 0, 1, ...)."""
    tracemalloc.start(FRAMES)
    taken = 0

    def snapshot(_sig: int, _frame: FrameType | None) -> None:
        nonlocal taken
        tracemalloc.take_snapshot().dump(f"{prefix}.{taken}")
        taken += 1

    signal.signal(signal.SIGUSR1, snapshot)
    from app.cli import main

    main(list(argv))


def _place(trace: tracemalloc.Traceback) -> str:
    """The innermost frame of project code in a traceback, else the innermost frame."""
    frames = list(reversed(trace))  # a Traceback runs oldest first: innermost first here
    for fr in frames:
        if "/site-packages/" not in fr.filename and "/lib/python3" not in fr.filename:
            return f"{Path(fr.filename).name}:{fr.lineno} {linecache.getline(fr.filename, fr.lineno).strip()[:70]}"
    fr = frames[0]
    return f"{Path(fr.filename).name}:{fr.lineno}"


def diff(before: Path, after: Path, per: int, top: int = 25) -> str:
    """Bytes and blocks that grew between two snapshots, per `per` (devices), by place."""
    a = tracemalloc.Snapshot.load(str(before))
    b = tracemalloc.Snapshot.load(str(after))
    stats = b.compare_to(a, "traceback")
    grouped: dict[str, list[int]] = {}
    for s in stats:
        key = _place(s.traceback)
        acc = grouped.setdefault(key, [0, 0])
        acc[0] += s.size_diff
        acc[1] += s.count_diff
    total = sum(v[0] for v in grouped.values())
    lines = [
        f"Python heap grew {total / per:,.0f} bytes per device (tracemalloc; C allocations of gRPC are not in it)"
    ]
    for key, (size, count) in sorted(grouped.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"{size / per:9,.0f} B {count / per:7.2f} blocks  {key}")
    return "\n".join(lines)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
