"""A server process the tooling starts itself: its folder, log, account, readiness, kill -9.

`ServerProcess` is what the database and etcd launchers share. A server lives in a folder:

- a temporary one (no `root` given), owned by the test or benchmark that made it: removed
  by `remove()`, and at the latest when the Python process exits;
- or one the caller names (the local cluster's), which outlives this program: the server
  is started detached (its own session), and keeps its data, password and ports between
  runs; whoever stops it later does so by its pid.

The processes are plain `subprocess.Popen` children, so a server started in one event loop
can be killed and restarted from another (pytest-asyncio runs each test in its own loop).
When run as root, a server that refuses root runs as an unprivileged account (`postgres`,
`mysql`, which the Debian packages create, else `nobody`) through `setpriv`.

Given a test host (`devtools/netns.py`), the server runs inside that host's network
namespace (`ip netns exec`), listens on the host's address (`bind`), and is probed from a
thread inside the namespace, never from the machine's own.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

from devtools.netns import Host
from devtools.ports import HOST
from devtools.waiting import eventually

START_TIMEOUT = 60.0
POLL = 0.05


class ServerUnavailable(RuntimeError):
    """A server is not installed here or did not start; the message says why."""


def account(preferred: str) -> pwd.struct_passwd | None:
    """The unprivileged account to run as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in (preferred, "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerUnavailable(f"running as root and neither {preferred!r} nor 'nobody' exists")


def _child_env() -> dict[str, str]:
    # Nothing inherited beyond PATH: no PG*, MYSQL_*, ETCD_* variables steering the server.
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin") + ":/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


_temporary: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


@atexit.register
def _remove_leftovers() -> None:
    """Never leave a temporary server or its folder behind, even after an interrupted run."""
    for server in list(_temporary):
        server.remove()


class ServerProcess:
    """One server process with its own folder; subclasses say how to run and probe it."""

    name = ""
    # Run as this account when we are root (None: as we are).
    account_name: str | None = None
    # How to ask it to shut down cleanly, and how long to give it before kill -9.
    stop_signal = signal.SIGTERM
    stop_timeout = 30.0
    # Exceptions a probe raises while the server is still starting.
    not_ready: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    def __init__(
        self, root: Path | None = None, *, log_path: Path | None = None, host: Host | None = None
    ) -> None:
        self.host = host
        self.bind = host.addr if host is not None else HOST
        self.account = account(self.account_name) if self.account_name else None
        self.temporary = root is None
        if root is None:
            root = Path(tempfile.mkdtemp(prefix=f"natter-{self.name}-"))
            _temporary.add(self)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.log_path = log_path or root / "server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        self._own(self.root, self.log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    # -- what subclasses provide -----------------------------------------------------------

    def _argv(self) -> list[str]:
        raise NotImplementedError

    async def _probe(self) -> bool:
        """Whether the server answers (raising one of `not_ready` counts as no)."""
        raise NotImplementedError

    def _ports_chosen(self) -> bool:
        raise NotImplementedError

    def _choose_ports(self) -> None:
        raise NotImplementedError

    async def _before_first_start(self) -> None:
        """Initialise the data folder (initdb)."""

    async def _after_first_start(self) -> None:
        """Set the server up once it first answers (accounts)."""

    def _initialised(self) -> bool:
        return True

    # -- process handling ------------------------------------------------------------------

    def _own(self, *paths: Path) -> None:
        """Give files the server writes to the account it runs as."""
        if self.account is not None:
            for path in paths:
                os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def _popen(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        # Switching to the server's account is `setpriv`'s job, not Popen's: Popen can change
        # the user only through fork(), and a fork() while gRPC's threads run may crash the
        # child before exec (seen: a postmaster dead of SIGSEGV). Without user= Popen uses
        # vfork, which is safe beside those threads.
        acc = self.account
        if acc is not None:
            argv = [
                "setpriv",
                f"--reuid={acc.pw_uid}",
                f"--regid={acc.pw_gid}",
                "--clear-groups",
                *argv,
            ]
        if self.host is not None:
            argv = self.host.argv(argv)
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=_child_env(),
                # Its own session: kill() takes its whole process group, and a detached
                # server outlives the command that started it.
                start_new_session=True,
            )

    def log_tail(self, path: Path | None = None, lines: int = 30) -> str:
        return log_tail(path or self.log_path, lines)

    async def _run_once(self, argv: list[str], what: str) -> None:
        log = self.root / f"{what}.log"
        proc = await asyncio.to_thread(self._popen, argv, log)
        code = await asyncio.to_thread(proc.wait)
        if code != 0:
            raise ServerUnavailable(
                f"{self.name} {what} failed with exit code {code}:\n{self.log_tail(log)}"
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    async def start(self) -> None:
        """Start the server (initialising its data the first time) and wait until it answers.

        Ports are chosen on the first start (unless given) and kept for every restart.
        """
        if self.running:
            return
        first = not self._initialised()
        if first:
            await self._before_first_start()
        fresh = not self._ports_chosen()
        attempts = 3 if fresh else 1  # a chosen port can be taken before the server binds it
        for attempt in range(attempts):
            if fresh:
                self._choose_ports()
            self.proc = await asyncio.to_thread(self._popen, self._argv(), self.log_path)
            try:
                await self._wait_ready()
                break
            except ServerUnavailable:
                await self.kill()
                if attempt == attempts - 1:
                    raise
        if first:
            await self._after_first_start()

    async def _wait_ready(self) -> None:
        last: list[BaseException] = []

        async def ready() -> bool:
            proc = self.proc
            assert proc is not None
            if proc.poll() is not None:
                raise ServerUnavailable(
                    f"{self.name} exited with code {proc.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            try:
                if self.host is not None:
                    return await self.host.call(self._probe)
                return await self._probe()
            except self.not_ready as e:
                last[:] = [e]
                return False

        try:
            await eventually(ready, START_TIMEOUT, POLL)
        except AssertionError:
            error = repr(last[0]) if last else "none"
            raise ServerUnavailable(
                f"{self.name} did not answer within {START_TIMEOUT:.0f} s "
                f"(last error: {error}):\n{self.log_tail()}"
            ) from None

    def kill_now(self) -> None:
        """SIGKILL the server's whole process group and reap it (synchronous)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.proc = None

    async def kill(self) -> None:
        """SIGKILL the server and every process it started, as a crash or power cut would."""
        await asyncio.to_thread(self.kill_now)

    async def stop(self) -> None:
        """Shut the server down cleanly; kill it if it does not stop in time."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, self.stop_timeout)
        await self.kill()  # reaps, and takes any straggler in the process group

    async def restart(self, *, crash: bool = True) -> None:
        """Stop the server (kill -9 unless crash=False) and start it on the same ports and data."""
        if crash:
            await self.kill()
        else:
            await self.stop()
        await self.start()

    def remove(self, *, wait: bool = True) -> None:
        """Kill the server if needed and delete its folder.

        `wait=False` deletes it in a process of its own that outlives this one: a database
        server's folder after a whole test session (hundreds of databases, gigabytes) takes
        minutes to delete, which nobody needs to wait for.
        """
        self.kill_now()
        _temporary.discard(self)
        if wait or not self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
            return
        doomed = self.root.with_name(f"{self.root.name}.removing")
        try:
            self.root.rename(doomed)
            # A shell that leaves `rm` running on its own and exits at once.
            subprocess.run(
                ["sh", "-c", 'rm -rf -- "$0" &', str(doomed)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                check=True,
            )
        except OSError:
            shutil.rmtree(self.root, ignore_errors=True)
            shutil.rmtree(doomed, ignore_errors=True)

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self.temporary:
            # The data is thrown away, so there is nothing to shut down cleanly for: a clean
            # PostgreSQL shutdown would checkpoint every test database first, for seconds.
            await asyncio.to_thread(self.remove)
        else:
            await self.stop()
