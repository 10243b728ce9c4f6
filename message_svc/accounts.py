"""Accounts and devices: registration, Argon2id passwords, hashed bearer tokens, logout."""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from message_svc import rules
from message_svc.ports import Fanout
from message_svc.store import Store, UserRow
from natter.domain import (
    Delivery,
    Device,
    DeviceRevoked,
    Me,
    NotificationPreview,
    Principal,
    User,
)
from natter.errors import NotFound, ResourceExhausted, Unauthenticated
from natter.settings import Settings


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def public(row: UserRow) -> User:
    return User(row.user_id, row.username, row.display_name)


class LoginThrottle:
    """Wrong passwords per account: past the allowance, tries wait a doubling delay.

    Guessing one account's password online then costs hours, not seconds, and a throttled
    try costs no Argon2 hash. In memory, per message_svc process (each replica throttles on
    its own); at most MAX_TRACKED accounts are remembered, the oldest forgotten first.
    """

    MAX_TRACKED = 100_000

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed = settings.login_failures_allowed
        self.base = settings.login_delay_seconds
        self.most = settings.login_delay_max_seconds
        self._clock = clock
        self._failed: OrderedDict[str, tuple[int, float]] = OrderedDict()  # count, wait until

    def check(self, ident: str) -> None:
        entry = self._failed.get(ident)
        if entry is None:
            return
        wait = entry[1] - self._clock()
        if wait > 0:
            raise ResourceExhausted(
                f"too many wrong passwords for this account; try again in {math.ceil(wait)} s",
                "LOGIN_THROTTLED",
            )

    def failed(self, ident: str) -> None:
        count = self._failed.pop(ident, (0, 0.0))[0] + 1
        over = count - self.allowed
        delay = 0.0 if over <= 0 else min(self.most, self.base * 2 ** (over - 1))
        self._failed[ident] = (count, self._clock() + delay)
        while len(self._failed) > self.MAX_TRACKED:
            self._failed.popitem(last=False)

    def succeeded(self, ident: str) -> None:
        self._failed.pop(ident, None)


class Accounts:
    def __init__(self, store: Store, settings: Settings, fanout: Fanout) -> None:
        self.store = store
        self.fanout = fanout
        self.throttle = LoginThrottle(settings)
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        # A hash to verify against when the user does not exist, so timing does not tell.
        self._dummy = self.hasher.hash(secrets.token_hex(16))

    async def register(self, username: str, display_name: str, phone: str, password: str) -> User:
        name = rules.username(username.strip().lower())
        shown = rules.display_name(display_name or name)
        number = rules.phone(phone.strip())
        rules.password(password, name)
        hashed = await asyncio.to_thread(self.hasher.hash, password)
        row = await self.store.create_user(name, shown, number, hashed)
        return public(row)

    async def login(self, username: str, password: str, device_name: str) -> tuple[User, int, str]:
        ident = username.strip().lower() if not username.startswith("+") else username.strip()
        device = (device_name or "device").strip()[:64] or "device"
        self.throttle.check(ident)
        rows = await self.store.find_users([ident]) if ident else {}
        row = rows.get(ident)
        hashed = row.password_hash if row else self._dummy
        try:
            await asyncio.to_thread(self.hasher.verify, hashed, password)
        except (VerificationError, InvalidHashError):
            row = None
        if row is None:
            # Unknown names count too, so throttling does not tell which names exist.
            self.throttle.failed(ident)
            raise Unauthenticated("wrong username or password", "BAD_CREDENTIALS")
        self.throttle.succeeded(ident)
        token = secrets.token_urlsafe(32)
        dev = await self.store.create_device(row.user_id, device, token_hash(token))
        return public(row), dev.device_id, token

    async def authenticate(self, token: str) -> Principal:
        if not token:
            raise Unauthenticated(
                "missing bearer token: send 'authorization: Bearer <token>'", "NO_TOKEN"
            )
        found = await self.store.device_by_token(token_hash(token))
        if found is None:
            raise Unauthenticated("token is invalid or was revoked; log in again", "BAD_TOKEN")
        user, device = found
        return Principal(public(user), device.device_id)

    async def logout(self, who: Principal) -> None:
        await self.store.revoke_device(who.device_id)
        await self.fanout.deliver(
            [Delivery(DeviceRevoked(who.device_id), user_ids=(who.user.user_id,))]
        )

    async def devices(self, who: Principal) -> list[Device]:
        rows = await self.store.list_devices(who.user.user_id)
        return [
            Device(
                r.device_id, r.name, r.create_time, r.last_active_time, r.device_id == who.device_id
            )
            for r in rows
        ]

    async def me(self, who: Principal) -> Me:
        rows = await self.store.get_users([who.user.user_id])
        row = rows.get(who.user.user_id)
        if row is None:
            raise NotFound("account no longer exists")
        return Me(
            public(row),
            who.device_id,
            row.phone or "",
            row.hide_last_seen,
            row.notification_preview,
        )

    async def update_settings(
        self,
        who: Principal,
        display_name: str | None,
        hide_last_seen: bool | None,
        notification_preview: NotificationPreview | None = None,
    ) -> None:
        shown = rules.display_name(display_name) if display_name is not None else None
        await self.store.update_user(who.user.user_id, shown, hide_last_seen, notification_preview)
