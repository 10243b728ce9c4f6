"""The delivery canary: a system user who messages itself end to end and reports how it went.

Every `canary_interval_seconds` one device of the canary sends a message to the canary's
own thread through the public API (the same gRPC stream and socket server a phone would
use, through Locate and redirects in a cluster) and its second device waits for the push.
Each probe counts as ok (with its latency), failed (the send was not acknowledged in
`canary_timeout_seconds`) or lost (acknowledged but not delivered in time), and the time
of the last success is kept, so an operator sees delivery break before users say so.

The canary is an account no one can find, message, list or log in to (`is_system`; its
name "~canary" cannot be registered). Its thread keeps only its latest messages; its two
devices are logged out when the process stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid

import grpc

from message_svc.accounts import token_hash
from message_svc.store import Store
from natter import domain as d
from natter.errors import AlreadyExists, NatterError
from natter.metrics import Metrics
from natter.sdk import Client, Connection
from natter.settings import Settings

logger = logging.getLogger(__name__)

USERNAME = "~canary"
CONFIG_KEY = "canary_user"
KEEP_MESSAGES = 100
PRUNE_EVERY = 100


async def canary_user(store: Store) -> int:
    """The canary's account id, created on first use (once, whatever the replicas)."""
    for _ in range(50):
        found = await store.get_config(CONFIG_KEY)
        if found:
            return int(found)
        try:
            row = await store.create_user(USERNAME, "Delivery canary", None, "!", is_system=True)
        except AlreadyExists:
            await asyncio.sleep(0.1)  # another process made it: its id is recorded shortly
            continue
        await store.set_config(CONFIG_KEY, str(row.user_id))
        return row.user_id
    raise RuntimeError("the canary's account exists but its id was never recorded")


class Canary:
    """Runs the probes of one process until stopped."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: Metrics,
        address: str,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.address = address
        self.credentials = credentials
        self.probes = 0
        self.ok = 0
        self._task: asyncio.Task[None] | None = None
        self._devices: list[int] = []
        self._user_id = 0

    def start(self) -> None:
        if self.settings.canary_interval_seconds > 0:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._devices:
            with contextlib.suppress(Exception):
                await self.store.revoke_devices(self._user_id, self._devices)
            self._devices = []

    async def _device(self, name: str) -> str:
        token = secrets.token_urlsafe(32)
        row = await self.store.create_device(self._user_id, name, token_hash(token))
        self._devices.append(row.device_id)
        return token

    async def _run(self) -> None:
        try:
            await self._probe_forever()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the delivery canary stopped")

    async def _probe_forever(self) -> None:
        self._user_id = await canary_user(self.store)
        thread_id = await self.store.direct_thread(self._user_id, self._user_id)
        sender = Client(
            self.address, await self._device("canary-send"), credentials=self.credentials
        )
        receiver = Client(
            self.address, await self._device("canary-receive"), credentials=self.credentials
        )
        user = d.User(self._user_id, USERNAME, "Delivery canary")
        sender.user = receiver.user = user
        out = Connection(sender, skip_replay=True, auto_ack=False)
        into = Connection(receiver, skip_replay=True)
        try:
            await out.start(wait_synced=False)
            await into.start(wait_synced=False)
            while True:
                await self.probe(out, into, thread_id)
                if self.probes % PRUNE_EVERY == 0:
                    await self._prune(thread_id)
                await asyncio.sleep(self.settings.canary_interval_seconds)
        finally:
            await out.close()
            await into.close()
            await sender.close()
            await receiver.close()

    async def probe(self, out: Connection, into: Connection, thread_id: int) -> str:
        """One probe: send, wait for the other device to get it. Returns the result."""
        self.probes += 1
        timeout = self.settings.canary_timeout_seconds
        text = f"canary {uuid.uuid4().hex}"
        started = time.perf_counter()
        try:
            await out.send(text, thread_id=thread_id, timeout=timeout)
        except (TimeoutError, NatterError) as e:
            logger.warning("delivery canary: send not acknowledged within %g s: %s", timeout, e)
            return self._result("failed")
        deadline = started + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                logger.warning("delivery canary: acknowledged, not delivered in %g s", timeout)
                return self._result("lost")
            try:
                ev = await into.next_event(left)
            except TimeoutError:
                continue
            if isinstance(ev, d.Message) and ev.text == text:
                self.metrics.canary_seconds.observe(time.perf_counter() - started)
                self.metrics.canary_last_success.set(time.time())
                self.ok += 1
                return self._result("ok")

    def _result(self, result: str) -> str:
        self.metrics.canary_probes.labels(result).inc()
        return result

    async def _prune(self, thread_id: int) -> None:
        thread = await self.store.get_thread(thread_id)
        if thread is not None and thread.last_seq > KEEP_MESSAGES:
            await self.store.prune_messages(thread_id, thread.last_seq - KEEP_MESSAGES)
