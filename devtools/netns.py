"""Separate test hosts on one machine: network namespaces on a private bridge, and faults between them.

`Network` makes, for one test, a bridge in a namespace of its own and one namespace per host,
each joined to the bridge by a veth pair and given an address on a private subnet that exists
only inside these namespaces (the machine's own namespace gets no interface, route or rule):

    with Network() as net:                      # removed on exit, even on failure
        etcd, db = net.add("etcd"), net.add("db")
        proc = etcd.popen(["etcd", "--listen-client-urls", f"http://{etcd.addr}:2379", ...])
        net.partition([db], [etcd])             # iptables DROP both ways, in db's namespace
        net.heal()                              # every rule gone
        net.link(etcd, up=False)                # the host's cable pulled (at the bridge)

Processes run inside a host with `ip netns exec` (`Host.argv`, `Host.popen`); a probe the
test itself makes runs in a thread that entered the host's namespace (`Host.call`), so no
connection to a test address is ever made from the machine's own namespace. Namespaces are
named `natter-<pid>-<n>-<host>`: `Network()` first removes those of processes that no longer
exist (an earlier run that crashed), killing whatever still runs inside them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "natter-"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
# A /24 that only the test's namespaces know; the bridge namespace holds no address of it.
SUBNET = "10.213.0"
_networks = itertools.count(1)
_live: weakref.WeakSet[Network] = weakref.WeakSet()


class NetworkUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no iproute2 or iptables); says what to do."""


def missing() -> str | None:
    """Why test networks cannot be built on this machine, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (the test machines run tests as root)"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            return f"{tool} not found; run scripts/install --all (Debian: apt-get install -y {package})"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [_tool(argv[0]), *argv[1:]], capture_output=True, text=True, check=False, timeout=30
    )
    if check and done.returncode != 0:
        raise NetworkUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    done = _run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _kill_inside(ns: str) -> None:
    """SIGKILL every process still running in a namespace (and reap our own children)."""
    done = _run("ip", "netns", "pids", ns, check=False)
    for word in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(word), signal.SIGKILL)


def _delete(ns: str) -> None:
    _kill_inside(ns)
    _run("ip", "netns", "delete", ns, check=False)


def remove_leftovers() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone; returns their names."""
    gone = []
    for ns in _namespaces():
        m = re.match(rf"{re.escape(PREFIX)}(\d+)-", ns)
        if m and not _pid_alive(int(m.group(1))):
            _delete(ns)
            gone.append(ns)
    return gone


_libc: ctypes.CDLL | None = None


def _setns(path: Path) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Host:
    """One test host: a namespace with `lo` and `eth0` (address `addr`) on the network's bridge."""

    def __init__(self, network: Network, name: str, index: int) -> None:
        self.network = network
        self.name = name
        self.index = index
        self.ns = f"{network.prefix}{name}"
        self.addr = f"{network.subnet}.{index}"
        self.peer = f"v{index}"  # its veth's other end, on the bridge

    def __repr__(self) -> str:
        return f"Host({self.name} {self.addr})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` as a command that runs inside this host."""
        return [_tool("ip"), "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside this host (Popen's keyword arguments pass through)."""
        return subprocess.Popen(self.argv(argv), **kwargs)  # type: ignore[call-overload, no-any-return]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.ns, *argv, check=check)

    def iptables(self, *rule: str) -> None:
        self.run("iptables", "-w", *rule)

    def call_sync(self, fn: Callable[[], T]) -> T:
        """Run `fn` in a new thread that entered this host's namespace; its sockets are here."""
        box: list[T] = []
        error: list[BaseException] = []

        def inside() -> None:
            try:
                _setns(NETNS_DIR / self.ns)
                box.append(fn())
            except BaseException as e:  # handed to the caller
                error.append(e)

        t = threading.Thread(target=inside, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join()
        if error:
            raise error[0]
        return box[0]

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await `fn()` on an event loop of its own in this host's namespace (a probe, say)."""
        return await asyncio.to_thread(self.call_sync, lambda: asyncio.run(_run_coro(fn)))


async def _run_coro(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


class Network:
    """A bridge and hosts for one test; `remove()` (or leaving `with`) takes all of it away."""

    def __init__(self, subnet: str = SUBNET) -> None:
        reason = missing()
        if reason is not None:
            raise NetworkUnavailable(reason)
        remove_leftovers()
        self.subnet = subnet
        self.prefix = f"{PREFIX}{os.getpid()}-{next(_networks)}-"
        self.bridge_ns = f"{self.prefix}bridge"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        self._removed = False
        _live.add(self)
        self._ns_add(self.bridge_ns)
        _run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")

    def _ns_add(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def add(self, name: str) -> Host:
        """A new host on the bridge, at the next address of the subnet."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        host = Host(self, name, len(self.hosts) + 1)
        self._ns_add(host.ns)
        _run(
            "ip", "-n", host.ns, "link", "add", "eth0", "type", "veth",
            "peer", "name", host.peer, "netns", self.bridge_ns,
        )  # fmt: skip
        _run("ip", "-n", self.bridge_ns, "link", "set", host.peer, "master", "br0", "up")
        _run("ip", "-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
        _run("ip", "-n", host.ns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # -- faults --------------------------------------------------------------------------

    def partition(
        self, side: Iterable[Host], other: Iterable[Host], *, reject: bool = False
    ) -> None:
        """No packet between any host of `side` and any of `other`, either way, until `heal`.

        DROP by default (the peer hears nothing; TCP retransmits, calls hang until their
        deadlines); `reject` answers with a TCP reset instead (a refused or broken connection).
        """
        others = list(other)
        for a in side:
            for b in others:
                if not reject:
                    a.iptables("-A", "INPUT", "-s", b.addr, "-j", "DROP")
                    a.iptables("-A", "OUTPUT", "-d", b.addr, "-j", "DROP")
                    continue
                # The reset our OUTPUT rule makes comes in from b's address: let it through.
                a.iptables("-A", "INPUT", "-s", b.addr, "-p", "tcp", "!", "--tcp-flags",
                           "RST", "RST", "-j", "REJECT", "--reject-with", "tcp-reset")  # fmt: skip
                a.iptables("-A", "OUTPUT", "-d", b.addr, "-p", "tcp", "-j", "REJECT",
                           "--reject-with", "tcp-reset")  # fmt: skip
                a.iptables("-A", "INPUT", "-s", b.addr, "!", "-p", "tcp", "-j", "DROP")
                a.iptables("-A", "OUTPUT", "-d", b.addr, "!", "-p", "tcp", "-j", "DROP")

    def isolate(self, host: Host) -> None:
        """`host` hears from and reaches no other host (its own loopback still works)."""
        self.partition([host], [h for h in self.hosts.values() if h is not host])

    def heal(self) -> None:
        """Every partition rule removed; links are left as they are (see `link`)."""
        for host in self.hosts.values():
            host.iptables("-F")

    def rules(self, host: Host) -> list[str]:
        """The filter rules now in a host (for tests of this module)."""
        out = host.run("iptables", "-w", "-S").stdout
        return [line for line in out.splitlines() if line.startswith("-A")]

    def link(self, host: Host, *, up: bool) -> None:
        """Plug or unplug a host's cable: its veth's bridge end goes down or up."""
        _run("ip", "-n", self.bridge_ns, "link", "set", host.peer, "up" if up else "down")

    # -- lifecycle -----------------------------------------------------------------------

    def remove(self) -> None:
        """Kill what still runs inside the hosts and delete every namespace (idempotent)."""
        if self._removed:
            return
        self._removed = True
        for ns in reversed(self._made):
            _delete(ns)
        self._made.clear()
        _live.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


@atexit.register
def _remove_all() -> None:
    for net in list(_live):
        net.remove()
