"""Loopback TCP ports for the servers that tests, benchmarks and the local cluster start."""

from __future__ import annotations

import random
import socket

HOST = "127.0.0.1"
# Below Linux's ephemeral range (32768-60999): a port a process was killed on stays free for
# it to restart on, instead of becoming the local end of some outgoing connection meanwhile.
PORTS = range(20000, 32000)
_handed_out: set[int] = set()


def _bindable(port: int, *, reuse: bool) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def port_free(port: int) -> bool:
    """Whether a server could listen on `port` now (binding as servers do, with SO_REUSEADDR)."""
    return _bindable(port, reuse=True)


def free_port() -> int:
    """A port nothing is bound to, below the ephemeral range, not handed out before here.

    Servers keep the port they were given across restarts, so tests can kill one and start
    it again where its clients look for it.
    """
    for _ in range(1000):
        port = random.choice(PORTS)
        if port not in _handed_out and _bindable(port, reuse=False):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")
