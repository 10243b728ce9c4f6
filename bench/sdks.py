"""The Kotlin SDK next to the Python SDK in one run: sender/recipient pairs against the embedded
server, flat out, acked msg/s and send-to-deliver latency; each SDK gets a fresh server."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.chat import run_chat
from bench.common import REPO, BenchServer, append_result, fmt, print_table

KOTLIN = REPO / "clients" / "kotlin"
CLASSPATH = KOTLIN / "target" / "test.classpath"


@dataclass(frozen=True, slots=True)
class SdkResult:
    sdk: str
    acked_rate: float
    delivered_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_ms: float | None  # per acked message in the window
    client_cpu_ms: float
    lost: int
    duplicates: int


def build_kotlin() -> list[str]:
    """Compile the SDK and its bench (test sources) and return the java command's classpath."""
    subprocess.run(
        [
            str(REPO / "scripts" / "kotlin"),
            "-q",
            "test-compile",
            "dependency:build-classpath",
            f"-Dmdep.outputFile={CLASSPATH}",
            "-Dmdep.includeScope=test",
        ],
        check=True,
    )
    deps = CLASSPATH.read_text().strip()
    return [str(KOTLIN / "target" / "classes"), str(KOTLIN / "target" / "test-classes"), deps]


def run_python(pairs: int, seconds: float, inflight: int, procs: int) -> SdkResult:
    server = BenchServer.start(count_fsyncs=False)
    try:
        r = run_chat(server.address, server, pairs, seconds, inflight, 0.0, procs)
    finally:
        server.stop()
        server.cleanup()
    per = max(1, r.acked_in_window)
    return SdkResult(
        "python",
        r.acked_rate,
        r.delivered_rate,
        r.p50_ms,
        r.p95_ms,
        r.p99_ms,
        None if r.server_cpu is None else r.server_cpu / per * 1e3,
        r.client_cpu / per * 1e3,
        r.acked - r.delivered,
        r.duplicates,
    )


def run_kotlin(
    classpath: list[str], pairs: int, seconds: float, inflight: int, warmup: float
) -> SdkResult:
    server = BenchServer.start(count_fsyncs=False)
    try:
        cmd = [
            "java",
            "-cp",
            os.pathsep.join(classpath),
            "dev.natter.client.BenchKt",
            server.address,
            str(pairs),
            str(seconds),
            str(inflight),
            str(warmup),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        cpu0 = cpu1 = None
        t0 = t1 = 0.0
        figures: dict[str, float] = {}
        for line in proc.stdout:
            line = line.strip()
            if line == "window-start":
                cpu0, t0 = server.cpu(), time.monotonic()
            elif line == "window-end":
                cpu1, t1 = server.cpu(), time.monotonic()
            elif line.startswith("{"):
                figures = json.loads(line)
        if proc.wait(120) != 0 or not figures:
            raise RuntimeError(f"the Kotlin bench failed ({proc.returncode})")
    finally:
        server.stop()
        server.cleanup()
    window = t1 - t0 if t1 > t0 else seconds
    per = max(1.0, figures["acked_in_window"])
    server_cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / per * 1e3
    return SdkResult(
        "kotlin",
        figures["acked_in_window"] / window,
        figures["delivered_in_window"] / window,
        figures["p50_ms"],
        figures["p95_ms"],
        figures["p99_ms"],
        server_cpu,
        figures["client_cpu"] / per * 1e3,
        int(figures["acked"] - figures["delivered"]),
        int(figures["duplicates"]),
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sdks", description=__doc__)
    p.add_argument("--pairs", type=int, default=10, help="sender/recipient pairs (default 10)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10)")
    p.add_argument("--inflight", type=int, default=8, help="sends in flight per sender (default 8)")
    p.add_argument("--procs", type=int, default=2, help="Python client processes (default 2)")
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="unmeasured seconds of load for the JVM (default 2)",
    )
    p.add_argument("--rounds", type=int, default=1, help="alternate the two SDKs this many times")
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)

    classpath = build_kotlin()
    results: list[SdkResult] = []
    for _ in range(args.rounds):
        results.append(run_python(args.pairs, args.seconds, args.inflight, args.procs))
        results.append(run_kotlin(classpath, args.pairs, args.seconds, args.inflight, args.warmup))
    rows = []
    for r in results:
        rows.append(
            (
                r.sdk,
                f"acked {fmt(r.acked_rate)}/s, delivered {fmt(r.delivered_rate)}/s, "
                f"p50/p95/p99 {r.p50_ms:.1f}/{r.p95_ms:.1f}/{r.p99_ms:.1f} ms, "
                + ("" if r.server_cpu_ms is None else f"server {r.server_cpu_ms:.3f} CPU-ms/msg, ")
                + f"client {r.client_cpu_ms:.3f} CPU-ms/msg, lost {r.lost}, duplicates {r.duplicates}",
            )
        )
    py = [r for r in results if r.sdk == "python"]
    kt = [r for r in results if r.sdk == "kotlin"]
    ratio = sum(r.acked_rate for r in kt) / max(1e-9, sum(r.acked_rate for r in py))
    rows.append(("kotlin / python acked", f"{ratio:.2f}"))
    print_table(
        f"SDKs: {args.pairs} pairs x {args.inflight} in flight, {args.seconds:g} s each, flat out",
        rows,
    )
    if not args.no_record:
        params = (
            f"{args.pairs} pairs x {args.inflight} in flight, {args.seconds:g} s, flat out, "
            f"python {args.procs} procs, kotlin 1 JVM ({args.warmup:g} s warm-up), {args.rounds} round(s)"
        )
        figures = "; ".join(f"{sdk}: {text}" for sdk, text in rows[:-1])
        append_result("sdks", params, figures, "python SDK, same run", f"{ratio:.2f}")
    if any(r.lost or r.duplicates for r in results):
        sys.exit("lost or duplicated messages")


if __name__ == "__main__":
    main()
