"""`python -m bench all`: the whole set in one run, one table with ratios, results and plots.

Each benchmark runs as its own `python -m bench.NAME` process (so one's gRPC state, threads
and children never leak into the next) with its output shown as it comes, indented under
a progress line. They append their rows to a file of this run's own; once all are done the
rows are printed as one table, appended to docs/bench-results.md (not with `--smoke` or
`--no-record`), and drawn: the sweep's latency curve (docs/bench-sweep.png) and every
ratio to a ceiling measured in the same run (docs/bench-all.png). A benchmark that finds
a message lost or duplicated exits non-zero, and so does this command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import LOAD_AT_START, REPO, RESULTS, RESULTS_HEADER

SUMMARY_PLOT = REPO / "docs" / "bench-all.png"


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    module: str
    args: tuple[str, ...]


def _a(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def stages(size: str, plot_dir: Path) -> list[Stage]:
    """The set at one of three sizes: smoke (seconds, for the test), default, full (the issue's)."""
    sweep_plot = ("--plot", str(plot_dir / "bench-sweep.png"))
    if size == "smoke":
        return [
            Stage(
                "chat",
                "bench.chat",
                _a(
                    "--pairs 2 --seconds 1 --ceiling-seconds 0.5 --client both --no-strace --procs 1"
                ),
            ),
            Stage(
                "sweep",
                "bench.sweep",
                (
                    *_a("--pairs 2 --seconds 1 --fractions 0.5 --procs 1 --ceiling-seconds 0.5"),
                    *sweep_plot,
                ),
            ),
            Stage("sync", "bench.sync", _a("--messages 100 --inflight 8")),
            Stage(
                "idle",
                "bench.idle",
                _a(
                    "--devices 40 --procs 1 --channels 1 --interval 1 --window 1 --pairs 5 --per-pair 2"
                ),
            ),
        ]
    full = size == "full"
    return [
        Stage("chat", "bench.chat", _a(f"--pairs 20 --seconds {10 if full else 6} --client both")),
        Stage("sweep", "bench.sweep", (*_a(f"--seconds {8 if full else 5}"), *sweep_plot)),
        Stage("sync", "bench.sync", _a("--messages 10000")),
        Stage(
            "group",
            "bench.group_fanout",
            ()
            if full
            else _a(
                "--members 100 --nodes 2 --few-messages 300 --all-messages 30 --presence-trials 1"
            ),
        ),
        Stage(
            "cluster",
            "bench.cluster",
            _a("--seconds 8") if full else _a("--sockets 1,3 --seconds 5 --users 0"),
        ),
        Stage(
            "idle",
            "bench.idle",
            _a("--devices 20000 --procs 8 --channels 8")
            if full
            else _a("--devices 2000 --procs 2 --channels 4 --window 5"),
        ),
    ]


def _rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("| 20"):  # a row (the header's lines start "| date" and "| ---")
            out.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return out


def run_stage(stage: Stage, env: dict[str, str], n: int, total: int) -> tuple[bool, float]:
    print(
        f"\n[{n}/{total}] {stage.name}: python -m {stage.module} {' '.join(stage.args)}", flush=True
    )
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", stage.module, *stage.args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"    {line.rstrip()}", flush=True)
    ok = proc.wait() == 0
    seconds = time.monotonic() - t0
    print(f"[{n}/{total}] {stage.name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
    return ok, seconds


def summary_plot(rows: Sequence[Sequence[str]], path: Path) -> Path | None:
    """Every row's ratio to its same-run ceiling as a bar (rows without one are left out)."""
    bars = []
    for n, r in enumerate(rows, 1):
        try:
            ratio = float(r[6].split()[0])
        except (ValueError, IndexError):
            continue
        params = r[3].split(", load ")[0]
        if "batch client" in params:
            params = "batch client, " + params
        label = f"{n}. {r[2]}: {params[:48]}"
        if r[2] == "idle":
            label += " (memory: lower is better)"
        bars.append((label, ratio))
    if not bars:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.2), dpi=110)
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color="#4a7bd0")
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to the ceiling measured in the same run")
    loads = []
    for r in rows:
        with contextlib.suppress(ValueError, IndexError):
            loads.append(float(r[3].rsplit("load ", 1)[1].split()[0]))
    span = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "n/a"
    ax.set_title(
        f"python -m bench all, {rows[0][0]} (load {span} as each bench started)", fontsize=9
    )
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("what", choices=["all"], help="the set to run")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the issue's sizes (about 20 minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: checks it all runs")
    p.add_argument("--only", help="comma-separated stage names to run (default: all)")
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)
    record = not (args.smoke or args.no_record)
    size_name = "smoke" if args.smoke else "full" if args.full else "default"
    with tempfile.TemporaryDirectory(prefix="natter-bench-all-") as tmp:
        scratch = Path(tmp)
        plot_dir = REPO / "docs" if record else scratch
        todo = stages(size_name, plot_dir)
        if args.only:
            wanted = {x.strip() for x in args.only.split(",")}
            todo = [s for s in todo if s.name in wanted]
        results = scratch / "results.md"
        env = {**os.environ, "NATTER_BENCH_RESULTS": str(results)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        print(
            f"python -m bench all ({size_name}): {len(todo)} benchmarks, "
            f"load {LOAD_AT_START:.1f} at start",
            flush=True,
        )
        outcome = [(s.name, *run_stage(s, env, n, len(todo))) for n, s in enumerate(todo, 1)]
        rows = _rows(results)
        print(f"\npython -m bench all ({size_name}), load {LOAD_AT_START:.1f} at start")
        print("| bench | params | figures | ceiling (same run) | ratio |")
        print("| --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} |")
        for name, ok, seconds in outcome:
            print(f"{name}: {'ok' if ok else 'FAILED'} ({seconds:.0f} s)")
        if record and rows:
            if not RESULTS.exists():
                RESULTS.write_text(RESULTS_HEADER)
            with RESULTS.open("a") as fh:
                for line in results.read_text().splitlines():
                    if line.startswith("| 20"):
                        fh.write(line + "\n")
            print(f"{len(rows)} rows appended to {RESULTS.relative_to(REPO)}")
        drawn = summary_plot(rows, (plot_dir / SUMMARY_PLOT.name))
        if drawn is not None:
            print(f"plot: {drawn}")
        if (plot_dir / "bench-sweep.png").exists():
            print(f"plot: {plot_dir / 'bench-sweep.png'}")
    failed = [name for name, ok, _ in outcome if not ok]
    if failed:
        raise SystemExit(f"FAILED: {', '.join(failed)}")


if __name__ == "__main__":
    main()
