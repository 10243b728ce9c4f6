"""Test hosts (devtools/netns.py): separate namespaces that reach each other only over the bridge,
partitions and unplugged links that really cut them, and nothing left behind afterwards."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from devtools import netns
from devtools.netns import Host, Network


@pytest.fixture
def net() -> Iterator[Network]:
    reason = netns.missing()
    if reason is not None:
        pytest.fail(f"the network tests need namespaces: {reason}", pytrace=False)
    n = Network()
    try:
        yield n
    finally:
        n.remove()


def listen(host: Host) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket()
        s.bind((host.addr, 0))
        s.listen()
        return s

    return host.call_sync(make)


def reaches(src: Host, dst: socket.socket, timeout: float = 0.5) -> bool:
    """Whether `src` can open a TCP connection to the listener (made in another host)."""
    addr = dst.getsockname()

    def attempt() -> bool:
        try:
            with socket.create_connection(addr, timeout=timeout):
                return True
        except OSError:
            return False

    return src.call_sync(attempt)


def test_hosts_talk_over_the_bridge_and_partitions_cut_them(net: Network) -> None:
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    assert (a.addr, b.addr) == (f"{netns.SUBNET}.1", f"{netns.SUBNET}.2")
    lb, lc = listen(b), listen(c)
    assert reaches(a, lb) and reaches(a, lc)
    # The machine's own namespace has no way to the subnet (it would have to route it out).
    with pytest.raises(OSError), socket.socket() as s:
        s.bind((b.addr, 0))
    net.partition([a], [b])
    la = listen(a)
    assert not reaches(a, lb) and not reaches(b, la)
    la.close()
    assert reaches(a, lc) and reaches(c, lb)  # only that pair is cut
    assert len(net.rules(a)) == 2 and net.rules(b) == []
    net.heal()
    assert reaches(a, lb) and net.rules(a) == []
    net.isolate(c)
    assert not reaches(a, lc) and not reaches(c, lb) and reaches(a, lb)
    net.heal()
    net.link(b, up=False)
    assert not reaches(a, lb)
    net.link(b, up=True)
    assert reaches(a, lb, timeout=5)
    for s in (lb, lc):
        s.close()


def test_a_rejecting_partition_resets_connections_at_once(net: Network) -> None:
    a, b = net.add("a"), net.add("b")
    lb = listen(b)
    net.partition([a], [b], reject=True)

    def attempt() -> str:
        try:
            socket.create_connection(lb.getsockname(), timeout=5).close()
        except ConnectionRefusedError:
            return "refused"
        except OSError as e:
            return type(e).__name__
        return "connected"

    assert a.call_sync(attempt) == "refused"
    lb.close()


def test_processes_run_inside_a_host_and_everything_goes_at_removal(net: Network) -> None:
    a = net.add("a")
    out = a.run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"{a.addr}/24" in out
    sleeper = a.popen(["sleep", "600"])
    names = set(netns._namespaces())
    assert {a.ns, net.bridge_ns} <= names
    net.remove()
    assert sleeper.wait(timeout=10) == -9  # killed with its host
    assert not {a.ns, net.bridge_ns} & set(netns._namespaces())
    net.remove()  # twice is fine


def test_leftovers_of_a_crashed_run_are_removed() -> None:
    if netns.missing():
        pytest.fail(f"the network tests need namespaces: {netns.missing()}", pytrace=False)
    # A namespace named for a process that no longer exists, with something still inside.
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns = f"{netns.PREFIX}{dead.pid}-1-old"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    inside = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
    try:
        n = Network()  # cleans up first
        n.remove()
        assert ns not in netns._namespaces()
        assert inside.wait(timeout=10) == -9
    finally:
        inside.kill()
        subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)
