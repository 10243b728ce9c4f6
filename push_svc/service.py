"""push_svc assembled: the server's keys, the devices' targets, and the worker of this process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import aiohttp

from natter.domain import Principal, PushTarget
from natter.settings import Settings
from push_svc import targets
from push_svc.ports import Liveness
from push_svc.sending import Sender
from push_svc.store import PushStore
from push_svc.vapid import Vapid, generate_pem, topic_key
from push_svc.worker import Worker

logger = logging.getLogger(__name__)

# Without a configured contact, push services see this one; set vapid_subject (docs/push.md).
FALLBACK_SUBJECT = "mailto:natter@localhost"


@dataclass(frozen=True, slots=True)
class PushConfig:
    web_push: bool
    vapid_public_key: str
    gateway_urls: tuple[str, ...]
    grace_seconds: float


class PushService:
    """Targets per device (the public PushService) and, where settings say so, the worker.

    `start` loads the VAPID key (the settings' file, else one made at first start and kept
    in the store, so every process of a cluster signs with the same key browsers subscribed
    with) and starts the worker; `stop` ends it.
    """

    def __init__(
        self, store: PushStore, settings: Settings, liveness: Liveness, node_id: str
    ) -> None:
        self.store = store
        self.settings = settings
        self.liveness = liveness
        self.node_id = node_id
        self.vapid: Vapid | None = None
        self.worker: Worker | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        subject = s.vapid_subject or FALLBACK_SUBJECT
        if not s.vapid_subject:
            logger.warning(
                "vapid_subject is not set: push services see %s as this server's contact",
                FALLBACK_SUBJECT,
            )
        if s.vapid_private_key_file:
            self.vapid = Vapid.from_file(s.vapid_private_key_file, subject)
        else:
            pem = await self.store.server_secret("vapid_private_key", generate_pem)
            self.vapid = Vapid(pem, subject)
        key = await self.store.server_secret("push_topic_key", topic_key)
        connector = aiohttp.TCPConnector(limit=max(1, s.push_concurrency))
        self._session = aiohttp.ClientSession(connector=connector)
        sender = Sender(self._session, self.vapid, s.push_ttl_seconds)
        self.worker = Worker(self.store, s, self.liveness, sender, key, self.node_id)
        if s.push_worker:
            self._task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the public API ------------------------------------------------------------------

    def config(self) -> PushConfig:
        assert self.vapid is not None, "push service not started"
        s = self.settings
        return PushConfig(True, self.vapid.public_key, s.push_gateway_urls, s.push_grace_seconds)

    async def set_target(self, who: Principal, target: PushTarget) -> PushTarget:
        checked = targets.check(target, self.settings)
        return await self.store.set_push_target(checked)

    async def get_target(self, who: Principal) -> PushTarget | None:
        return await self.store.get_push_target(who.device_id)

    async def delete_target(self, who: Principal) -> None:
        await self.store.delete_push_target(who.device_id)
