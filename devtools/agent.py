"""The client host: a process inside a test host that runs the workload and probes for the test.

A test's own process stays in the machine's namespace and never opens a connection to a test
address; whatever needs the network — the chat clients (`devtools/workload.py`), health
probes of natter processes, a view of etcd's membership, calls to Toxiproxy's API — runs in
this process, started inside the clients' host with `ip netns exec`, and driven over its
standard input and output: one JSON request a line, one JSON answer a line, matched by id.

    agent = await Agent.start(clients_host, log_dir)     # the driver's side
    await agent.call("setup", front=..., pairs=4, group=6)
    await agent.call("start", total=1000, rate=100)
    stats = await agent.call("stats")
    ...
    await agent.close()

Requests: `probe` (addresses → serving?), `watch` (etcd endpoints: keep an observer registry),
`members` (role → registered node ids), `owner` (user ids → owning socket node), `http`
(method, url, body → status and JSON body), `setup`, `start`, `stats`, `restart`, `typing`,
`note`, `stop`, `settle`, `audit`, `finish` (the workload's connections closed), `debug`,
`close`. Each workload's history goes to `history-N.jsonl` in the log folder (its path is in
the answer to `setup`), the agent's own log to `agent.log`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from devtools.netns import Host
from devtools.processes import log_tail
from devtools.serving import serving
from devtools.workload import Workload

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


class AgentError(RuntimeError):
    """A request failed inside the agent (the message is its error), or the agent died."""


# -- inside the client host ------------------------------------------------------------------


class _Server:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workload: Workload | None = None
        self.observer: Any = None  # registry.EtcdRegistry, imported when asked for
        self.done = asyncio.Event()
        self.runs = 0
        self.ops: dict[str, Callable[..., Awaitable[Any]]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")
        }

    def _w(self) -> Workload:
        if self.workload is None:
            raise AgentError("no workload: send setup first")
        return self.workload

    async def op_probe(self, addresses: list[str]) -> dict[str, bool]:
        found = await asyncio.gather(*(serving(a) for a in addresses))
        return dict(zip(addresses, found, strict=True))

    async def op_watch(self, endpoints: list[str], ttl: int = 2) -> bool:
        from registry import EtcdRegistry

        if self.observer is None:
            self.observer = EtcdRegistry(endpoints, ttl=ttl)
            await self.observer.start()
        return True

    async def op_members(self, roles: list[str]) -> dict[str, list[str]]:
        if self.observer is None:
            raise AgentError("no observer: send watch first")
        return {r: sorted(n.node_id for n in self.observer.nodes(r)) for r in roles}

    async def op_owner(self, user_ids: list[int]) -> dict[str, str]:
        ring = self.observer.ring("socket")
        out = {}
        for uid in user_ids:
            node = ring.owner(str(uid))
            out[str(uid)] = node.node_id if node else ""
        return out

    async def op_http(self, method: str, url: str, body: Any = None) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.request(method, url, json=body) as resp,
        ):
            text = await resp.text()
            return {"status": resp.status, "body": json.loads(text) if text.strip() else None}

    async def op_setup(
        self, front: str, pairs: int, group: int, second_devices: int, tag: str = "", **kw: Any
    ) -> dict[str, Any]:
        await self.op_finish()
        self.runs += 1
        history = self.log_dir / f"history-{self.runs}.jsonl"
        self.workload = Workload(front, history, tag=tag, **kw)
        await self.workload.setup(pairs=pairs, group=group, second_devices=second_devices)
        w = self.workload
        return {
            "history": str(history),
            "devices": [dv.dev for dv in w.devices],
            "users": {dv.dev: dv.user_id for dv in w.devices},
            "group": w.group_id,
        }

    async def op_start(self, total: int, rate: float = 100.0, inflight: int = 4) -> bool:
        self._w().start(total, rate, inflight)
        return True

    async def op_extend(self, more: int) -> bool:
        self._w().extend(more)
        return True

    async def op_stats(self) -> dict[str, Any]:
        return dataclasses.asdict(self._w().stats())

    async def op_restart(self, count: int) -> list[str]:
        return await self._w().restart(count)

    async def op_debug(self) -> dict[str, Any]:
        """Each device's connection as the SDK sees it (for a failure's account)."""
        out: dict[str, Any] = {}
        for dv in self._w().devices:
            c = dv.conn
            if c is None:
                continue
            task = c._task
            out[dv.dev] = {
                "live": c._live,
                "holding": c._holding,
                "outbox": len(c.outbox),
                "in_flight": len(c.in_flight),
                "address": c._address,
                "loop": "running" if task and not task.done() else repr(task),
                "queued": c.events.qsize(),
                "stack": [str(f) for f in (task.get_stack(limit=8) if task else [])],
            }
        return out

    async def op_typing(self) -> bool:
        await self._w().typing()
        return True

    async def op_note(self, text: str) -> bool:
        self._w().note(text)
        return True

    async def op_stop(self, timeout: float = 60.0) -> int:
        return await self._w().stop(timeout)

    async def op_settle(self, timeout: float = 60.0) -> list[Any]:
        w = self._w()
        await w.settle(timeout)
        return w.missing()[:20]

    async def op_audit(self) -> int:
        return await self._w().audit()

    async def op_finish(self) -> bool:
        """Close the workload's connections; its history is complete."""
        w, self.workload = self.workload, None
        if w is not None:
            await w.close()
        return True

    async def op_close(self) -> bool:
        await self.op_finish()
        if self.observer is not None:
            await self.observer.close(revoke=False)
        self.done.set()
        return True

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        tasks: set[asyncio.Task[None]] = set()
        while not self.done.is_set():
            line = await reader.readline()
            if not line:
                break
            req = json.loads(line)
            task = asyncio.create_task(self._answer(req))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if not self.done.is_set():
            await self.op_close()

    async def _answer(self, req: dict[str, Any]) -> None:
        rid, op, args = req["id"], req["op"], req.get("args", {})
        try:
            fn = self.ops.get(op)
            if fn is None:
                raise AgentError(f"unknown request {op!r}")
            answer: dict[str, Any] = {"id": rid, "ok": True, "result": await fn(**args)}
        except Exception as e:
            logger.exception("request %s failed", op)
            answer = {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(answer, default=str) + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.agent")
    parser.add_argument("--log-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=args.log_dir / "agent.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_Server(args.log_dir).serve())


# -- the driver's side ---------------------------------------------------------------------


class Agent:
    """The driver's handle on an agent process: `call(op, **args)` returns its result."""

    def __init__(self, proc: asyncio.subprocess.Process, log_dir: Path) -> None:
        self.proc = proc
        self.log_dir = log_dir
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, host: Host, log_dir: Path) -> Agent:
        os.makedirs(log_dir, exist_ok=True)
        argv = host.argv([sys.executable, "-m", "devtools.agent", "--log-dir", str(log_dir)])
        with (log_dir / "agent.stderr").open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                limit=16 * 1024 * 1024,
            )
        return cls(proc, log_dir)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            answer = json.loads(line)
            fut = self._waiting.pop(answer["id"], None)
            if fut is None or fut.done():
                continue
            if answer["ok"]:
                fut.set_result(answer["result"])
            else:
                fut.set_exception(AgentError(answer["error"]))
        tail = log_tail(self.log_dir / "agent.stderr", 20)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(AgentError(f"the agent exited:\n{tail}"))
        self._waiting.clear()

    async def call(self, op: str, wait: float = 120.0, **args: Any) -> Any:
        assert self.proc.stdin is not None
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        if self._reader.done():
            raise AgentError("the agent exited")
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, "args": args}).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(fut, wait)
        finally:
            self._waiting.pop(rid, None)

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(AgentError, TimeoutError, ConnectionError):
                await self.call("close", wait=30)
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


if __name__ == "__main__":
    main()
