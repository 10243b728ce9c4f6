"""Chat traffic with a recorded history: users on several devices, 1:1 pairs and a group.

`Workload` registers users (some with a second device), connects every device through the
SDK with a recorder, and sends: each device pipelines up to `inflight` sends, paced to a total
rate, to its partner or into the group, until a budget of messages is spent. Every device
takes every event it is given (that is what "shown" means). Everything goes to one history
(`devtools/history.py` checks it); the same records keep a live tally here, so a driver can
wait on conditions: how many were acknowledged, which socket server each device is on,
whether every device has shown every acknowledged message yet.

    w = Workload(front, Path("history.jsonl"))
    await w.setup(pairs=4, group=6, second_devices=3)
    w.start(total=1000, rate=100)
    ...                                  # break something, heal it
    await w.stop(); await w.settle(); await w.audit(); await w.close()

`restart(n)` closes devices as an app that is killed would (sends not yet answered are
abandoned) and opens them again from the cursors they had taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.waiting import eventually
from natter import domain as d
from natter.errors import NatterError
from natter.sdk import Client, Connected, Connection, JsonlRecorder

logger = logging.getLogger(__name__)

PASSWORD = "correct horse battery"
_runs = itertools.count(1)


class Tally:
    """A Recorder that writes the history and keeps the counts a driver waits on."""

    def __init__(self, path: Path) -> None:
        self.log = JsonlRecorder(path)
        self.acked: dict[str, tuple[int, int]] = {}  # key -> (thread, seq)
        self.acked_by: dict[str, int] = defaultdict(int)  # device -> its sends acknowledged
        self.shown: dict[str, set[tuple[int, int]]] = defaultdict(set)
        self.node: dict[str, str] = {}
        self.connects: dict[str, int] = defaultdict(int)
        self.retries = 0
        self.abandoned = 0
        self.refused = 0
        self.sent_at: dict[str, float] = {}
        # (time, seconds) samples: send -> acknowledged, and send -> shown on another device.
        self.ack_latency: list[tuple[float, float]] = []
        self.show_latency: list[tuple[float, float]] = []
        self.on_record: Callable[[str, dict[str, Any]], None] | None = None

    def record(self, op: str, **fields: object) -> None:
        self.log.record(op, **fields)
        dev = str(fields.get("dev", ""))
        now = time.monotonic()
        if op == "send":
            self.sent_at[str(fields["key"])] = now
        elif op == "sent":
            key = str(fields["key"])
            at = (int(fields["thread"]), int(fields["seq"]))  # type: ignore[call-overload]
            self.acked[key] = at
            self.acked_by[dev] += 1
            started = self.sent_at.get(key)
            if started is not None:
                self.ack_latency.append((now, now - started))
        elif op == "show":
            self.shown[dev].add((int(fields["thread"]), int(fields["seq"])))  # type: ignore[call-overload]
            started = self.sent_at.get(str(fields.get("key", "")))
            if started is not None and not dev.endswith(f"/{fields.get('sdev')}"):
                self.show_latency.append((now, now - started))
        elif op == "connect":
            self.node[dev] = str(fields.get("node", ""))
            self.connects[dev] += 1
        elif op == "retry":
            self.retries += 1
        elif op == "abandoned":
            self.abandoned += 1
        elif op == "refused":
            self.refused += 1
        if self.on_record is not None:
            self.on_record(op, dict(fields))

    def close(self) -> None:
        self.log.close()


@dataclass
class Device:
    """One login of one user, its live connection and the task that takes its events."""

    user: str
    user_id: int
    client: Client
    dev: str
    conn: Connection | None = None
    reader: asyncio.Task[None] | None = None
    target: str = ""  # partner's username for 1:1, or "" to send into the group
    sent: int = 0


@dataclass
class Budget:
    total: int
    used: int = 0

    def take(self) -> bool:
        if self.used >= self.total:
            return False
        self.used += 1
        return True


@dataclass
class Stats:
    sends: int
    acked: int
    outstanding: int
    retries: int
    abandoned: int
    refused: int
    missing: int
    nodes: dict[str, str] = field(default_factory=dict)
    connects: int = 0
    acked_by: dict[str, int] = field(default_factory=dict)


class Workload:
    def __init__(
        self,
        front: str,
        history: Path,
        *,
        tag: str = "",
        timeout: float = 20.0,
        max_backoff: float = 1.0,
        locate: bool = False,
    ) -> None:
        self.front = front
        self.tally = Tally(history)
        self.tag = tag or f"w{next(_runs)}r{random.randrange(10**6)}"
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.locate = locate
        self.devices: list[Device] = []
        self.members: dict[int, set[int]] = {}
        self.group_id = 0
        self.users: dict[str, int] = {}
        self._stopping = asyncio.Event()
        self._senders: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self.budget = Budget(0)
        self._pace: tuple[float, int] | None = None  # (interval, inflight) of the senders
        self._restarts = 0

    # -- setup ---------------------------------------------------------------------------

    async def setup(
        self, *, pairs: int = 2, group: int = 4, second_devices: int = 1, contacts: bool = False
    ) -> None:
        """Users for `pairs` 1:1 conversations and one group of `group` members; all connect.

        The first `second_devices` users log in on a second device too.
        """
        names = [f"{self.tag}u{i}" for i in range(max(2 * pairs, group))]
        gate = asyncio.Semaphore(8)

        async def login(name: str, device: str, register: bool) -> Device:
            async with gate:
                client = Client(self.front, timeout=self.timeout)
                if register:
                    u = await client.register(name, PASSWORD)
                    self.users[name] = u.user_id
                await client.login(name, PASSWORD, device)
                assert client.user is not None
                dev = f"{name}/{client.device_id}"
                self.tally.record("device", dev=dev, user=name, user_id=client.user.user_id)
                return Device(name, client.user.user_id, client, dev)

        firsts = await asyncio.gather(*(login(n, "phone", True) for n in names))
        seconds = await asyncio.gather(*(login(n, "laptop", False) for n in names[:second_devices]))
        self.devices = [*firsts, *seconds]
        partner = {}
        for a, b in zip(names[: 2 * pairs : 2], names[1 : 2 * pairs : 2], strict=True):
            partner[a], partner[b] = b, a
        members = names[:group]
        if group >= 2:
            owner = next(x for x in firsts if x.user == members[0])
            thread = await owner.client.create_group(f"{self.tag} group", members[1:])
            self.group_id = int(thread.thread_id)
            self._member(self.group_id, [self.users[n] for n in members], "group")
        in_group = set(members) if group >= 2 else set()
        for dv in self.devices:
            # A phone talks 1:1 with its partner (the group's unpaired members in the group);
            # a second device talks in the group when its user is in it.
            phone = dv in firsts
            if dv.user in partner and (phone or dv.user not in in_group):
                dv.target = partner[dv.user]
        self.devices = [dv for dv in self.devices if dv.target or dv.user in in_group]
        if contacts:
            for a, b in partner.items():
                owner = next(x for x in firsts if x.user == a)
                await owner.client.add_contact(b)
        await asyncio.gather(*(self._connect(dv) for dv in self.devices))

    def _member(self, thread_id: int, user_ids: list[int], kind: str) -> None:
        if thread_id not in self.members:
            self.members[thread_id] = set(user_ids)
            self.tally.record("thread", thread=thread_id, members=user_ids, kind=kind)

    async def _connect(self, dv: Device, cursors: dict[int, int] | None = None) -> None:
        dv.conn = Connection(
            dv.client,
            cursors=cursors,
            recorder=self.tally,
            max_backoff=self.max_backoff,
            locate=self.locate,
        )
        dv.reader = asyncio.create_task(self._read(dv, dv.conn))
        await dv.conn.start(wait_synced=False)

    async def _read(self, dv: Device, conn: Connection) -> None:
        while True:
            ev = await conn.next_event()  # taking it is showing it (the recorder logs it)
            if isinstance(ev, Connected):
                logger.debug("%s connected to %s", dv.dev, ev.node_id)

    # -- traffic -------------------------------------------------------------------------

    def start(self, total: int, rate: float = 100.0, inflight: int = 4) -> None:
        """Send `total` more messages in all, about `rate` a second, `inflight` per device."""
        self._stopping.clear()
        self.budget = Budget(self.budget.used + total, self.budget.used)
        senders = self.devices
        interval = len(senders) / rate
        self._pace = (interval, inflight)
        self._senders = [
            asyncio.create_task(self._send_loop(dv, interval, inflight)) for dv in senders
        ]

    def extend(self, more: int) -> None:
        """Send `more` messages beyond what `start` asked, at its pace (a fault that lasts).

        Devices whose senders ran out of budget start sending again.
        """
        self.budget.total += more
        if self._stopping.is_set() or self._pace is None:
            return
        interval, inflight = self._pace
        self._senders = [
            asyncio.create_task(self._send_loop(dv, interval, inflight)) if task.done() else task
            for dv, task in zip(self.devices, self._senders, strict=False)
        ]

    async def _send_loop(self, dv: Device, interval: float, inflight: int) -> None:
        gate = asyncio.Semaphore(inflight)
        await asyncio.sleep(random.uniform(0, interval))  # spread the senders' phases
        while not self._stopping.is_set():
            await gate.acquire()
            if self._stopping.is_set() or not self.budget.take():
                gate.release()
                return
            dv.sent += 1
            task = asyncio.create_task(self._one(dv, dv.sent, gate))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))

    async def _one(self, dv: Device, n: int, gate: asyncio.Semaphore) -> None:
        key = f"{dv.dev}-{n}"
        text = f"{dv.dev}#{n}"
        try:
            conn = dv.conn
            assert conn is not None
            if dv.target:
                res = await conn.send(text, recipient=dv.target, client_msg_id=key)
                self._member(res.thread_id, [dv.user_id, self.users[dv.target]], "direct")
            else:
                await conn.send(text, thread_id=self.group_id, client_msg_id=key)
        except NatterError as e:  # abandoned (a restart) or refused: in the history
            logger.debug("%s: %s", key, e)
        finally:
            gate.release()

    async def typing(self) -> None:
        """Every connected device says it is typing in one of its threads (ephemeral)."""
        for dv in self.devices:
            thread = self.group_id if not dv.target else 0
            if dv.conn is not None and dv.conn.synced.is_set() and thread:
                with contextlib.suppress(NatterError):
                    await dv.conn.typing(thread)

    async def restart(self, count: int, *, fresh_cursors: bool = False) -> list[str]:
        """Close `count` devices (in turn) mid-traffic and open them again; returns them.

        As an app that is killed: sends not yet answered are abandoned. It comes back from
        the cursors it had taken (a client saves them), or from the server's (`fresh_cursors`).
        """
        picked = []
        for _ in range(count):
            dv = self.devices[self._restarts % len(self.devices)]
            self._restarts += 1
            conn, reader = dv.conn, dv.reader
            assert conn is not None and reader is not None
            cursors = None if fresh_cursors else conn.cursors
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await conn.close()
            await self._connect(dv, cursors)
            picked.append(dv.dev)
        return picked

    async def stop(self, timeout: float = 60.0) -> int:
        """Stop sending; wait up to `timeout` for every send made to be answered.

        Returns how many are still unanswered (0 when all were).
        """
        self._stopping.set()
        for t in self._senders:
            t.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        return len(self._inflight)

    # -- conditions ----------------------------------------------------------------------

    def missing(self) -> list[tuple[str, int, int]]:
        """(device, thread, seq) of acknowledged messages a member's device has not shown."""
        out = []
        for thread, seq in self.tally.acked.values():
            users = self.members.get(thread, set())
            for dv in self.devices:
                if dv.user_id in users and (thread, seq) not in self.tally.shown[dv.dev]:
                    out.append((dv.dev, thread, seq))
        return out

    async def settle(self, timeout: float = 60.0) -> int:
        """Wait until every device shows every acknowledged message; returns how many lack."""
        with contextlib.suppress(AssertionError):
            await eventually(lambda: not self.missing(), timeout, 0.1, "every message shown")
        return len(self.missing())

    def stats(self) -> Stats:
        t = self.tally
        return Stats(
            sends=self.budget.used,
            acked=len(t.acked),
            outstanding=len(self._inflight),
            retries=t.retries,
            abandoned=t.abandoned,
            refused=t.refused,
            missing=len(self.missing()),
            nodes=dict(t.node),
            connects=sum(t.connects.values()),
            acked_by=dict(t.acked_by),
        )

    async def audit(self) -> int:
        """Read every thread back from the store into the history; returns the rows read."""
        rows = 0
        for thread, users in sorted(self.members.items()):
            reader = next(dv for dv in self.devices if dv.user_id in users)
            async for m in reader.client.all_history(thread):
                self.tally.record(
                    "stored",
                    thread=m.thread_id,
                    seq=m.seq,
                    msg_id=m.msg_id,
                    sender=m.sender.user_id,
                    sdev=m.sender_device_id,
                    key=m.client_msg_id,
                    text=m.text if m.kind is d.MessageKind.TEXT else "",
                )
                rows += 1
        self.tally.record("audit", threads=len(self.members), rows=rows)
        return rows

    def note(self, text: str) -> None:
        self.tally.record("note", text=text)

    async def close(self) -> None:
        self._stopping.set()
        for t in [*self._senders, *self._inflight]:
            t.cancel()
        for dv in self.devices:
            if dv.reader is not None:
                dv.reader.cancel()
            if dv.conn is not None:
                await dv.conn.close()
            await dv.client.close()
        self.tally.log.flush()
        self.tally.close()
