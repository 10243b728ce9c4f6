"""One device's sends, handed to message_svc in the order the device wrote them."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from natter import convert
from natter import domain as d
from natter.errors import Internal, NatterError, transient
from natter.metrics import NO_METRICS, Metrics
from natter.v1 import socket_service_pb2 as spb
from socket_svc.light import Flag
from socket_svc.ports import MessageApi

logger = logging.getLogger(__name__)

# Sends per call to message_svc: one device's run, stored in one transaction.
MAX_BATCH = 128
# Sends received and not yet handed over; beyond this the device's stream is not read.
MAX_WAITING = 1024
# How long later sends are held back behind one refused for now, at most.
HOLD_SECONDS = 30.0


class OwnCopies(Protocol):
    """The sender's socket server (its Hub): pushes what a device sent to its other devices."""

    # What message_svc's fan-out calls this server: it pushes the sender's copies elsewhere only.
    origin: str

    async def deliver(self, deliveries: Sequence[d.Delivery]) -> None: ...


@dataclass(frozen=True, slots=True)
class _Hold:
    """Sends that arrived after `number` are refused like it until it is sent again."""

    number: int
    client_msg_id: str
    error: NatterError
    until: float


class Sends:
    """Per-device FIFO: sends go to message_svc in arrival order, one run at a time.

    While a run is in flight the next one gathers, so a device that pipelines its sends has
    them batched; message_svc stores a run in order (targets resolved in order, one
    transaction), so the seqs in each thread follow the order the device sent them, in one
    process or in a cluster (one run in flight per device, whichever replica takes it).

    A send refused for now (a transient error: the frame budget, message_svc or its store
    unavailable) must not be overtaken by the device's later sends while it waits for its
    retry. So until the device sends that one again, every send after it is refused the
    same way: those queued behind it at once, those that arrive later on arrival. The
    device then sends them again in its order (the SDK does). The hold also ends after
    HOLD_SECONDS, so a client that gave that send up is not refused for ever.

    With `own` (the socket server's hub) each run's stored messages are pushed to the
    sender's other devices here, once answered, and message_svc pushes them only to another
    server owning the sender: a device attached before the answer gets them now, one
    attached after finds them in the store on sync (docs/architecture.md).
    """

    def __init__(
        self,
        who: d.Principal,
        api: MessageApi,
        answer: Callable[[d.SendResult], None],
        refuse: Callable[[str, NatterError], None],
        metrics: Metrics = NO_METRICS,
        own: OwnCopies | None = None,
    ) -> None:
        self.who = who
        self.api = api
        self._own = own
        self._answer = answer
        self._refuse = refuse
        self._metrics = metrics
        self._numbers = itertools.count()
        self._waiting: deque[tuple[int, spb.Send]] = deque()
        # When each waiting or in-flight send arrived, by number (for send->ack latency).
        self._arrived: dict[int, float] = {}
        self._room = Flag()
        self._task: asyncio.Task[None] | None = None
        self._hold: _Hold | None = None
        self.runs = 0

    async def offer(self, send: spb.Send) -> None:
        """The device's next send, in the order its frames arrived; waits while many wait."""
        number = next(self._numbers)
        while True:
            if self._held_back(number, send):
                return
            if len(self._waiting) < MAX_WAITING:
                break
            self._room.clear()
            await self._room.wait()
        self._waiting.append((number, send))
        if self._metrics.enabled:
            self._arrived[number] = time.perf_counter()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def refused(self, send: spb.Send, error: NatterError) -> None:
        """A send refused before it got here (the device's frame budget)."""
        number = next(self._numbers)
        self._refuse(send.client_msg_id, error)
        if transient(error):
            self._hold_from(number, send.client_msg_id, error)

    async def drain(self) -> None:
        """Until every send received so far is answered."""
        while self._task is not None:
            await asyncio.wait({self._task})

    async def finish(self, grace: float) -> None:
        """Let the run in flight end within `grace` seconds, else cancel it; wait either way."""
        task = self._task
        if task is None:
            return
        _, late = await asyncio.wait({task}, timeout=grace)
        if late:
            task.cancel()
            await asyncio.wait({task})

    def _held_back(self, number: int, send: spb.Send) -> bool:
        hold = self._hold
        if hold is None:
            return False
        if send.client_msg_id == hold.client_msg_id or time.monotonic() > hold.until:
            self._hold = None
            return False
        self._refuse(send.client_msg_id, _behind(hold))
        return True

    def _hold_from(self, number: int, client_msg_id: str, error: NatterError) -> None:
        hold = self._hold
        if hold is not None and hold.client_msg_id == client_msg_id:
            # Sent again and refused again: still the one the others wait for.
            self._hold = _Hold(hold.number, client_msg_id, error, time.monotonic() + HOLD_SECONDS)
        elif hold is None or number < hold.number or time.monotonic() > hold.until:
            self._hold = _Hold(number, client_msg_id, error, time.monotonic() + HOLD_SECONDS)

    async def _run(self) -> None:
        try:
            while self._waiting:
                run = [self._waiting.popleft() for _ in range(min(MAX_BATCH, len(self._waiting)))]
                self._room.set()
                handed = time.perf_counter()
                outcomes = await self._hand_over([send for _, send in run])
                self.runs += 1
                if self._arrived:
                    answered = time.perf_counter()
                    queue, call = self._metrics.hops["edge_queue"], self._metrics.hops["send_call"]
                    for number, _ in run:
                        at = self._arrived.get(number)
                        if at is not None:
                            queue.observe(handed - at)
                            call.observe(answered - handed)
                if self._own is not None:
                    # Before the answers, as message_svc pushes others' copies before answering.
                    await self._push_own(run, outcomes)
                for (number, send), outcome in zip(run, outcomes, strict=True):
                    arrived = self._arrived.pop(number, None)
                    if isinstance(outcome, d.SendResult):
                        self._answer(outcome)
                        if arrived is not None:
                            self._metrics.send_ack_seconds.observe(time.perf_counter() - arrived)
                        continue
                    self._refuse(send.client_msg_id, outcome)
                    if transient(outcome):
                        self._hold_from(number, send.client_msg_id, outcome)
                hold = self._hold
                if hold is not None and self._waiting and self._waiting[-1][0] > hold.number:
                    # Queued behind a send that is held back: refused now, sent again after it.
                    later = [send for number, send in self._waiting if number > hold.number]
                    for number, _ in self._waiting:
                        if number > hold.number:
                            self._arrived.pop(number, None)
                    self._waiting = deque((n, s) for n, s in self._waiting if n <= hold.number)
                    for send in later:
                        self._refuse(send.client_msg_id, _behind(hold))
                self._room.set()
        finally:
            self._task = None

    def _copy(self, send: spb.Send, res: d.SendResult) -> d.Delivery:
        """The stored message for the sender's other devices (plain text comes back bare)."""
        who = self.who
        message = res.message or d.Message(
            res.thread_id,
            res.seq,
            res.msg_id,
            who.user,
            who.device_id,
            res.client_msg_id,
            d.MessageKind.TEXT,
            send.text,
            res.create_time,
        )
        return d.Delivery(message, user_ids=(who.user.user_id,), exclude_device_id=who.device_id)

    async def _push_own(
        self, run: Sequence[tuple[int, spb.Send]], outcomes: Sequence[d.SendResult | NatterError]
    ) -> None:
        """The run's stored messages to the sender's other devices on this server."""
        assert self._own is not None
        own = [
            self._copy(send, o)
            for (_, send), o in zip(run, outcomes, strict=True)
            if isinstance(o, d.SendResult)
        ]
        if not own:
            return
        try:
            await self._own.deliver(own)
        except Exception:  # the store is the truth: the other devices catch up by sync
            logger.warning("push of %d own copies failed", len(own), exc_info=True)

    async def _hand_over(self, sends: Sequence[spb.Send]) -> Sequence[d.SendResult | NatterError]:
        origin = self._own.origin if self._own is not None else ""
        try:
            outcomes = await self.api.send_many(
                self.who, [convert.send_request_of(s) for s in sends], origin
            )
        except NatterError as e:
            return [e] * len(sends)
        except Exception:
            logger.exception("send of %d messages failed", len(sends))
            return [Internal("internal error", "INTERNAL")] * len(sends)
        if len(outcomes) != len(sends):
            logger.error("%d sends got %d answers", len(sends), len(outcomes))
            return [Internal("internal error", "INTERNAL")] * len(sends)
        return outcomes


def _behind(hold: _Hold) -> NatterError:
    """The refusal of a send held back: like the one it waits for, so it is retried too."""
    e = hold.error
    return type(e)(
        f"held back behind {hold.client_msg_id!r}, which was refused for now "
        f"({e.message}); send that one again first",
        e.reason,
    )
