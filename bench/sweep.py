"""Latency across load: flat-out msg/s, then paced runs at fractions of it, p50/p99 per rate."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import echo
from bench.chat import ChatResult, run_chat
from bench.common import (
    LOAD_AT_START,
    REPO,
    BenchServer,
    append_result,
    fmt,
    print_table,
)

FRACTIONS = (0.10, 0.25, 0.50, 0.75, 0.90)
PLOT = REPO / "docs" / "bench-sweep.png"


@dataclass(frozen=True, slots=True)
class Point:
    fraction: float  # of flat out; 1.0 for the flat-out run itself
    target: float  # msg/s asked (0: flat out)
    result: ChatResult

    @property
    def lost(self) -> int:
        return self.result.acked - self.result.delivered


@dataclass(frozen=True, slots=True)
class Sweep:
    flat_out: Point
    points: tuple[Point, ...]
    ceiling: echo.EchoResult | None
    pairs: int
    inflight: int
    seconds: float
    client: str

    @property
    def all(self) -> tuple[Point, ...]:
        return (*self.points, self.flat_out)


def _one(
    pairs: int, seconds: float, inflight: int, rate: float, procs: int, client: str
) -> ChatResult:
    server = BenchServer.start(count_fsyncs=False)
    try:
        return run_chat(server.address, server, pairs, seconds, inflight, rate, procs, client)
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        server.cleanup()


def run_sweep(
    *,
    pairs: int = 20,
    inflight: int = 8,
    seconds: float = 8.0,
    procs: int = 2,
    client: str = "batch",
    fractions: Sequence[float] = FRACTIONS,
    ceiling_seconds: float = 3.0,
    progress: Callable[[str], None] = print,
) -> Sweep:
    """Flat out first (closed loop), then each fraction of its acked rate, open loop."""
    ceiling = echo.measure([(pairs, inflight)], ceiling_seconds)[0] if ceiling_seconds else None
    flat = _one(pairs, seconds, inflight, 0.0, procs, client)
    progress(f"  sweep: flat out {fmt(flat.acked_rate)} msg/s, p99 {flat.p99_ms:.1f} ms")
    points = []
    for fraction in fractions:
        target = flat.acked_rate * fraction
        # Paced senders need room: twice the flat-out in-flight per sender, so a stall shows
        # as latency (open loop) rather than as sends not made.
        r = _one(pairs, seconds, inflight * 2, target, procs, client)
        points.append(Point(fraction, target, r))
        progress(
            f"  sweep: {fraction:.0%} = {fmt(target)} msg/s asked, {fmt(r.acked_rate)} acked, "
            f"p50 / p99 {r.p50_ms:.1f} / {r.p99_ms:.1f} ms"
        )
    return Sweep(Point(1.0, 0.0, flat), tuple(points), ceiling, pairs, inflight, seconds, client)


def table_rows(s: Sweep) -> list[tuple[str, str]]:
    rows = []
    for p in s.all:
        r = p.result
        name = "flat out" if p.target == 0 else f"{p.fraction:.0%} ({fmt(p.target)}/s asked)"
        cpu = (
            "n/a"
            if r.server_cpu is None
            else f"{r.server_cpu / max(1, r.acked_in_window) * 1e3:.3f}"
        )
        rows.append(
            (
                name,
                f"{fmt(r.acked_rate)} msg/s, p50 / p99 {r.p50_ms:.1f} / {r.p99_ms:.1f} ms, "
                f"server {cpu} CPU-ms/msg, lost {p.lost}, duplicates {r.duplicates}",
            )
        )
    if s.ceiling is not None:
        rows += echo.echo_rows([s.ceiling])
        rows.append(("flat out / echo", f"{s.flat_out.result.acked_rate / s.ceiling.rate:.2f}"))
    return rows


def markdown(s: Sweep) -> str:
    """The sweep as a Markdown table (for docs/benchmarks.md)."""
    lines = [
        "| load | asked msg/s | acked msg/s | p50 ms | p99 ms | server CPU-ms/msg | lost | duplicates |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in s.all:
        r = p.result
        cpu = (
            "n/a"
            if r.server_cpu is None
            else f"{r.server_cpu / max(1, r.acked_in_window) * 1e3:.3f}"
        )
        name = "flat out" if p.target == 0 else f"{p.fraction:.0%}"
        asked = "—" if p.target == 0 else fmt(p.target)
        lines.append(
            f"| {name} | {asked} | {fmt(r.acked_rate)} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
            f"{cpu} | {p.lost} | {r.duplicates} |"
        )
    return "\n".join(lines)


def plot(s: Sweep, path: Path = PLOT) -> Path:
    """p50 and p99 against acked msg/s, the flat-out rate marked; a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [p.result.acked_rate for p in s.points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(rates, [p.result.p50_ms for p in s.points], "o-", label="p50")
    ax.plot(rates, [p.result.p99_ms for p in s.points], "s-", label="p99")
    ax.axvline(s.flat_out.result.acked_rate, color="grey", linestyle="--", label="flat out")
    ax.set_xlabel("acked msg/s (paced, open loop)")
    ax.set_ylabel("send → deliver, ms")
    ax.set_yscale("log")
    ax.set_title(
        f"natter embedded, SQLite, {s.pairs} pairs, {s.client} client "
        f"(load {LOAD_AT_START:.1f} at start)",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def record(s: Sweep) -> None:
    figures = "; ".join(
        ("flat out" if p.target == 0 else f"{p.fraction:.0%}")
        + f": {fmt(p.result.acked_rate)}/s p50/p99 {p.result.p50_ms:.1f}/{p.result.p99_ms:.1f} ms"
        + f" lost {p.lost} dup {p.result.duplicates}"
        for p in s.all
    )
    ceiling = "n/a" if s.ceiling is None else f"echo {s.ceiling.shape}: {fmt(s.ceiling.rate)} rt/s"
    ratio = "n/a" if s.ceiling is None else f"{s.flat_out.result.acked_rate / s.ceiling.rate:.2f}"
    append_result(
        "sweep",
        f"{s.pairs} pairs, flat out x {s.inflight} in flight then paced, {s.seconds:g} s each, "
        f"{s.client} client",
        figures,
        ceiling,
        ratio,
    )


def check(s: Sweep) -> list[str]:
    return [
        f"{p.fraction:.0%}: lost {p.lost}, duplicates {p.result.duplicates}"
        for p in s.all
        if p.lost or p.result.duplicates
    ]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--inflight", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per rate (default 8)")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--client", choices=["sdk", "batch"], default="batch")
    p.add_argument(
        "--fractions",
        default=",".join(f"{f:g}" for f in FRACTIONS),
        help="fractions of flat out to pace at (default 0.1,0.25,0.5,0.75,0.9)",
    )
    p.add_argument(
        "--plot", type=Path, default=PLOT, help=f"the PNG (default {PLOT.name} in docs/)"
    )
    p.add_argument(
        "--ceiling-seconds", type=float, default=3.0, help="seconds of bare-gRPC echo first"
    )
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)
    s = run_sweep(
        pairs=args.pairs,
        inflight=args.inflight,
        seconds=args.seconds,
        procs=args.procs,
        client=args.client,
        fractions=[float(x) for x in args.fractions.split(",") if x],
        ceiling_seconds=args.ceiling_seconds,
    )
    print_table(f"rate sweep: {args.pairs} pairs, {args.client} client", table_rows(s))
    print(markdown(s))
    print(f"plot written to {plot(s, args.plot)}")
    if not args.no_record:
        record(s)
    problems = check(s)
    if problems:
        raise SystemExit("FAILED: " + "; ".join(problems))


if __name__ == "__main__":
    main()
