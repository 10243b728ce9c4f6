"""Shared benchmark plumbing: the server under test, CPU and fsync counters, tables, results."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import multiprocessing
import multiprocessing.context
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from devtools.ports import free_port

REPO = Path(__file__).resolve().parent.parent
# `python -m bench all` points its benches at a file of its own, then appends the rows here.
RESULTS = Path(os.environ.get("NATTER_BENCH_RESULTS") or REPO / "docs" / "bench-results.md")
PASSWORD = "bench horse battery"
# Client processes start fresh: no inherited gRPC state (grpc does not survive fork).
SPAWN: multiprocessing.context.SpawnContext = multiprocessing.get_context("spawn")

# The bench's own server: cheap argon2 (registration is not what is measured) and no per-device
# frame rate limit (a policy, not a capacity: peers are measured with theirs off too). Nor
# per-address login and registration limits (every bench client is on 127.0.0.1), a device
# cap, or the delivery canary (its few messages would be counted with the bench's).
BENCH_SETTINGS: dict[str, object] = {
    "argon2_memory_kib": 1024,
    "argon2_time_cost": 1,
    "frames_per_second": 1e9,
    "frame_burst": 10**9,
    "log_level": "WARNING",
    "logins_per_ip_per_minute": 0,
    "registrations_per_ip_per_hour": 0,
    "registrations_per_hour": 0,
    "max_devices_per_user": 100_000,
    "max_pending_streams_per_address": 0,
    "canary_interval_seconds": 0,
}
OWN_SERVER_ENV = {f"NATTER_{k.upper()}": str(v) for k, v in BENCH_SETTINGS.items()}

# Other work on the machine skews every figure; each result row says how busy it was.
LOAD_AT_START = os.getloadavg()[0]

RESULTS_HEADER = """# Benchmark results

Rows are appended by `python -m bench.echo|chat|sync` (see [benchmarks.md](benchmarks.md)).
The machine is noisy: compare the ratio to the bare-gRPC ceiling measured in the same run,
not absolute figures across runs. "load" is the 1-minute load average when the bench started
(2 cores: above 0.5 means something else was running).

| date | commit | bench | params | figures | ceiling | ratio |
| --- | --- | --- | --- | --- | --- | --- |
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (every thread), from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS from /proc/PID/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for process {pid}")


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def git_sha() -> str:
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * len(title))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(flush=True)


def append_result(bench: str, params: str, figures: str, ceiling: str, ratio: str) -> None:
    """One row in docs/bench-results.md (created with its header when missing)."""
    if not RESULTS.exists():
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(RESULTS_HEADER)
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    params = f"{params}, load {LOAD_AT_START:.1f} at start"
    cells = [date, git_sha(), bench, params, figures, ceiling, ratio]
    with RESULTS.open("a") as fh:
        fh.write("| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n")
    shown = RESULTS.relative_to(REPO) if RESULTS.is_relative_to(REPO) else RESULTS
    print(f"result appended to {shown}")


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


class BenchServer:
    """The server under test: its own `natter serve` subprocess, or an address given."""

    def __init__(self, address: str, pid: int | None = None) -> None:
        self.address = address
        self.pid = pid
        self.own = False
        self.fsync_log: Path | None = None
        self.profile: Path | None = None
        self.pyspy: Path | None = None
        self._pyspy: subprocess.Popen[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @classmethod
    def start(
        cls,
        *,
        count_fsyncs: bool = True,
        profile: Path | None = None,
        pyspy: Path | None = None,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
        folder: Path | None = None,
        tracemalloc: Path | None = None,
    ) -> BenchServer:
        """`natter serve` on free ports over a temporary data folder, optionally under strace.

        `folder` is one a stopped server of this bench left (its data is served again).
        `tracemalloc`: the server traces its allocations and writes a snapshot to
        TRACEMALLOC.N on each `snapshot()` (bench/memwatch.py).

        strace (`--seccomp-bpf`, only fsync/fdatasync traced) stops the server only on those
        calls, so it costs little; each is logged with a wall-clock time to count per window.
        """
        folder = folder or Path(tempfile.mkdtemp(prefix="natter-bench-"))
        grpc_addr = f"127.0.0.1:{free_port()}"
        serve = [
            "serve",
            "--data",
            str(folder / "data"),
            "--grpc",
            grpc_addr,
            "--http",
            f"127.0.0.1:{free_port()}",
        ]
        if profile is not None:
            launch = (
                "import cProfile, sys; from app.cli import main; "
                f"cProfile.run('main(sys.argv[1:])', {str(profile)!r})"
            )
        elif tracemalloc is not None:
            launch = f"import sys; from bench import memwatch; memwatch.run({str(tracemalloc)!r}, sys.argv[1:])"
        else:
            launch = "import sys; from app.cli import main; main(sys.argv[1:])"
        cmd = [sys.executable, "-c", launch, *serve]
        server = cls(grpc_addr)
        server.own = True
        server.profile = profile
        server._dir = folder
        if count_fsyncs and shutil.which("strace"):
            server.fsync_log = folder / "fsyncs.log"
            cmd = [
                "strace",
                "-f",
                "--seccomp-bpf",
                "-qq",
                "-ttt",
                "-e",
                "trace=fsync,fdatasync,sync_file_range",
                "-o",
                str(server.fsync_log),
                *cmd,
            ]
        env = {**os.environ, **OWN_SERVER_ENV, **(env or {})}
        if tracemalloc is not None:  # bench/ is not installed: the server finds it here
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        # The child has its own copy of the descriptor: ours is closed at once.
        with (folder / "server.log").open("ab") as log:
            server._proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder
            )
        server._wait_ready(timeout)
        if pyspy is not None:
            from bench import flame

            assert server.pid is not None
            server.pyspy = pyspy
            server._pyspy = flame.start(server.pid, pyspy)
        return server

    @property
    def folder(self) -> Path | None:
        """The temporary folder of a server this bench started (its data, its log)."""
        return self._dir

    def rss_bytes(self) -> int | None:
        """The server's resident memory now (VmRSS), None when it is not ours to read."""
        if self.pid is None:
            return None
        try:
            return rss_bytes(self.pid)
        except OSError:
            return None

    @property
    def data_dir(self) -> Path | None:
        """The data folder of a server this bench started (None for one given by address)."""
        return self._dir / "data" if self._dir is not None else None

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        host, port = self.address.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"natter serve exited early:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.2):
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"natter serve did not listen within {timeout:g} s")
        self.pid = self._proc.pid
        if self.fsync_log is not None:  # the server is strace's child
            children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
            self.pid = int(children.read_text().split()[0])

    def snapshot(self) -> None:
        """Ask a server started with `tracemalloc` for its next snapshot (written at once)."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGUSR1)

    def cpu(self) -> float | None:
        if self.pid is None:
            return None
        try:
            return cpu_seconds(self.pid)
        except OSError:
            return None

    def log_tail(self, lines: int = 30) -> str:
        if self._dir is None:
            return ""
        path = self._dir / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def fsyncs_between(self, wall_start: float, wall_end: float) -> int | None:
        """fsync-family calls the server made in [wall_start, wall_end] (after stop())."""
        if self.fsync_log is None or not self.fsync_log.exists():
            return None
        count = 0
        for line in self.fsync_log.read_text().splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) == 3 and "sync" in parts[2]:
                with contextlib.suppress(ValueError):
                    if wall_start <= float(parts[1]) <= wall_end:
                        count += 1
        return count

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        target = self.pid or proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
            proc.kill()
            proc.wait(5)
        if self._pyspy is not None:  # it writes its file once the server has exited
            try:
                self._pyspy.wait(20)
            except subprocess.TimeoutExpired:
                self._pyspy.kill()
                self._pyspy.wait(5)
            self._pyspy = None

    def cleanup(self) -> None:
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def flame_summary(self) -> str:
        """The py-spy view (after stop(), with --py-spy): every thread, by layer and function."""
        if self.pyspy is None or not self.pyspy.exists():
            return ""
        from bench import flame

        return flame.summary(self.pyspy)

    def hot_spots(self, top: int = 20) -> str:
        """The server's cProfile view (after stop(), in profile mode): own time, then project code.

        cProfile sees only the event-loop thread; gRPC's and aiosqlite's threads are not in it.
        The loop's idle wait (`select.epoll.poll`) is left out of the own-time list.
        """
        if self.profile is None or not self.profile.exists():
            return ""
        import io

        out = io.StringIO()
        stats = pstats.Stats(str(self.profile), stream=out)
        print("== server hot spots by own time (event-loop thread)", file=out)
        stats.sort_stats("tottime").print_stats(r"^(?!.*select\.epoll)", top)
        print("== project code by cumulative time (includes awaiting)", file=out)
        stats.sort_stats("cumulative").print_stats(
            r"(message_svc|socket_svc|channel_svc|natter)/", top
        )
        return out.getvalue()


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """--server, --server-pid and --profile: the server a bench measures (`server_from`)."""
    p.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    p.add_argument("--server-pid", type=int, help="its PID, to read its CPU time")
    p.add_argument(
        "--profile",
        type=Path,
        help="run the own server under cProfile, write stats here, print hot spots",
    )
    p.add_argument(
        "--py-spy",
        dest="pyspy",
        type=Path,
        help="sample the own server's threads with py-spy (collapsed stacks here), "
        "print where its CPU went",
    )


def server_from(
    args: argparse.Namespace,
    *,
    count_fsyncs: bool,
    env: dict[str, str] | None = None,
    sample_whole_run: bool = True,
) -> BenchServer:
    """The server `add_server_arguments` asked for: the one given, or one of our own.

    `sample_whole_run` False leaves `--py-spy` to the bench, which samples only its window.
    """
    if args.server:
        return BenchServer(args.server, args.server_pid)
    return BenchServer.start(
        count_fsyncs=count_fsyncs,
        profile=args.profile,
        pyspy=getattr(args, "pyspy", None) if sample_whole_run else None,
        env=env,
    )
