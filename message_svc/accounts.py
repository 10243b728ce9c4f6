"""Accounts and devices: registration, Argon2id passwords, hashed bearer tokens, logouts.

Who may register follows the registration policy (`registration` setting, or an admin's
choice stored in the database); the first account of a fresh install becomes its admin.
Tokens lapse `token_lifetime_seconds` after a device's last use; every use renews them
(without a new token), so only a device left unused is logged out by time.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from message_svc import rules
from message_svc import schema as t
from message_svc.limits import KeyedBuckets, LoginThrottle
from message_svc.ports import DeviceRevocations, Fanout
from message_svc.profiles import Profiles, about_text, profile, public
from message_svc.store import DeviceRow, NewDevice, Store, UserRow
from natter.domain import (
    Delivery,
    Device,
    DeviceRevoked,
    Me,
    NotificationPreview,
    Principal,
    User,
)
from natter.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from natter.identifiers import normalise
from natter.metrics import NO_METRICS, Metrics
from natter.settings import REGISTRATION, Settings

__all__ = ["Accounts", "LoggedIn", "LoginThrottle", "Registered", "public", "token_hash"]

# A used device's expiry is moved forward at most this often (one write per device).
RENEW_EVERY = timedelta(minutes=5)
_PLATFORM = re.compile(r"[^a-z0-9._ +-]")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


def platform_of(given: str, user_agent: str) -> str:
    """The device's platform as it said, else guessed from its user agent; at most 32 chars."""
    text = given.strip().lower()
    if not text and user_agent:
        text = user_agent.split("/", 1)[0].split(" ", 1)[0].lower()
    return _PLATFORM.sub("", text)[:32]


@dataclass(frozen=True, slots=True)
class Registered:
    user: User
    is_admin: bool


@dataclass(frozen=True, slots=True)
class LoggedIn:
    user: User
    device_id: int
    token: str
    expire_time: datetime
    replaced: tuple[int, ...] = ()


class Accounts:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        fanout: Fanout,
        metrics: Metrics = NO_METRICS,
        revocations: Sequence[DeviceRevocations] = (),
    ) -> None:
        self.store = store
        self.settings = settings
        self.fanout = fanout
        self.metrics = metrics
        self.revocations = list(revocations)
        self.profiles = Profiles(store, fanout)
        self.throttle = LoginThrottle(settings)
        # Passwords checked by devices already logged in (changing the password, deleting
        # the account): per device, so a stranger's guesses elsewhere never get in the way.
        self.device_throttle = LoginThrottle(settings.replace(login_account_failures_allowed=0))
        self.logins_per_ip = KeyedBuckets(settings.logins_per_ip_per_minute, 60.0)
        self.registrations_per_ip = KeyedBuckets(settings.registrations_per_ip_per_hour, 3600.0)
        self.registrations = KeyedBuckets(settings.registrations_per_hour, 3600.0)
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        # A hash to verify against when the user does not exist, so timing does not tell.
        self._dummy = self.hasher.hash(secrets.token_hex(16))
        # A short lifetime (tests) renews more often, so use keeps a token alive.
        self.renew_every = min(RENEW_EVERY, timedelta(seconds=settings.token_lifetime_seconds / 10))

    def _limited(self, limit: str, message: str, reason: str) -> ResourceExhausted:
        self.metrics.rate_limited.labels(limit).inc()
        return ResourceExhausted(message, reason)

    # -- registration --------------------------------------------------------------------

    async def policy(self) -> tuple[str, bool]:
        """The registration policy in force, and whether an admin chose it."""
        chosen = await self.store.get_config(t.REGISTRATION)
        if chosen in REGISTRATION:
            return chosen, True
        return self.settings.registration, False

    async def register(
        self,
        username: str,
        display_name: str,
        phone: str,
        password: str,
        *,
        invite_code: str = "",
        address: str = "",
    ) -> Registered:
        name = rules.username(username.strip().lower())
        shown = rules.display_name(display_name or name)
        number = rules.phone(phone.strip())
        rules.password(password, name)
        policy, _ = await self.policy()
        fresh = await self.store.get_config(t.FIRST_ADMIN) is None
        code = invite_code.strip()
        if policy == "closed":
            raise PermissionDenied(
                "registration is closed on this server: an admin creates accounts",
                "REGISTRATION_CLOSED",
            )
        if policy == "invite" and not code and not fresh:
            raise PermissionDenied(
                "registration on this server needs an invite code from an admin",
                "INVITE_REQUIRED",
            )
        if not self.registrations_per_ip.take(address):
            raise self._limited(
                "registration_ip",
                "too many accounts registered from your address; try again later",
                "REGISTRATION_RATE_LIMITED",
            )
        if policy == "open" and not self.registrations.take(""):
            raise self._limited(
                "registration",
                "this server takes no more registrations for now; try again later",
                "REGISTRATION_RATE_LIMITED",
            )
        hashed = await asyncio.to_thread(self.hasher.hash, password)
        row = await self.store.create_user(
            name,
            shown,
            number,
            hashed,
            first_becomes_admin=True,
            invite_hash=token_hash(code) if policy == "invite" and not fresh else "",
        )
        return Registered(public(row), row.is_admin)

    async def create_account(
        self, username: str, display_name: str, phone: str, password: str, is_admin: bool
    ) -> UserRow:
        """An account made by an admin, whatever the policy and limits."""
        name = rules.username(username.strip().lower())
        shown = rules.display_name(display_name or name)
        number = rules.phone(phone.strip())
        rules.password(password, name)
        hashed = await asyncio.to_thread(self.hasher.hash, password)
        return await self.store.create_user(
            name, shown, number, hashed, first_becomes_admin=True, is_admin=is_admin
        )

    async def hash_password(self, password: str, username: str) -> str:
        rules.password(password, username)
        return await asyncio.to_thread(self.hasher.hash, password)

    # -- logging in and out --------------------------------------------------------------

    async def login(
        self,
        username: str,
        password: str,
        device_name: str,
        *,
        platform: str = "",
        replace_oldest: bool = False,
        address: str = "",
        token: str = "",
    ) -> LoggedIn:
        ident = normalise(username)
        device = (device_name or "device").strip()[:64] or "device"
        if not self.logins_per_ip.take(address):
            self.metrics.logins.labels("rate_limited").inc()
            raise self._limited(
                "login_ip",
                "too many logins from your address; try again in a minute",
                "LOGIN_RATE_LIMITED",
            )
        rows = await self.store.find_users([ident]) if ident else {}
        row = rows.get(ident)
        # One account, one throttle, whichever of its names was typed; unknown names are
        # throttled alike, so throttling does not tell which names exist.
        account = f"user:{row.user_id}" if row is not None else f"name:{ident}"
        trusted = row is not None and bool(token) and await self._holds(token, row.user_id)
        try:
            self.throttle.check(account, address, trusted)
        except ResourceExhausted:
            self.metrics.logins.labels("throttled").inc()
            self.metrics.rate_limited.labels("login_throttle").inc()
            raise
        if not await self._verify(row.password_hash if row else self._dummy, password):
            row = None
        if row is None or row.deleted:
            self.throttle.failed(account, address)
            self.metrics.logins.labels("bad_credentials").inc()
            raise Unauthenticated("wrong username or password", "BAD_CREDENTIALS")
        self.throttle.succeeded(account, address)
        if row.disabled:
            self.metrics.logins.labels("disabled").inc()
            raise Unauthenticated(
                "this account is disabled; ask the server's admins", "ACCOUNT_DISABLED"
            )
        secret = secrets.token_urlsafe(32)
        expire = utcnow() + timedelta(seconds=self.settings.token_lifetime_seconds)
        added = await self.store.add_device(
            NewDevice(
                row.user_id,
                device,
                token_hash(secret),
                platform,
                expire,
                self.settings.max_devices_per_user,
                replace_oldest,
            )
        )
        if added.replaced:
            await self.announce_revoked(row.user_id, added.replaced)
        self.metrics.logins.labels("ok").inc()
        return LoggedIn(public(row), added.device.device_id, secret, expire, added.replaced)

    async def _verify(self, hashed: str, password: str) -> bool:
        try:
            await asyncio.to_thread(self.hasher.verify, hashed, password)
        except (VerificationError, InvalidHashError):
            return False
        return True

    async def _holds(self, token: str, user_id: int) -> bool:
        """Whether a token is a live one of this user's devices."""
        try:
            who = await self.authenticate(token)
        except Unauthenticated:
            return False
        return who.user.user_id == user_id

    async def authenticate(self, token: str) -> Principal:
        if not token:
            raise Unauthenticated(
                "missing bearer token: send 'authorization: Bearer <token>'", "NO_TOKEN"
            )
        found = await self.store.device_by_token(token_hash(token))
        if found is None:
            raise Unauthenticated("token is invalid or was revoked; log in again", "BAD_TOKEN")
        user, device = found
        now = utcnow()
        if device.expire_time is not None and device.expire_time <= now:
            raise Unauthenticated(
                "this device was not used for too long and was logged out; log in again",
                "TOKEN_EXPIRED",
            )
        if user.deleted:
            raise Unauthenticated("token is invalid or was revoked; log in again", "BAD_TOKEN")
        if user.disabled:
            raise Unauthenticated(
                "this account is disabled; ask the server's admins", "ACCOUNT_DISABLED"
            )
        last = device.last_active_time
        if device.expire_time is None or last is None or now - last >= self.renew_every:
            await self.renew([device.device_id])
        return Principal(public(user), device.device_id)

    async def renew(self, device_ids: Sequence[int]) -> set[int]:
        """Mark devices used now and renew their tokens; returns those still logged in."""
        now = utcnow()
        expire = now + timedelta(seconds=self.settings.token_lifetime_seconds)
        return await self.store.renew_devices(device_ids, now, expire)

    async def announce_revoked(self, user_id: int, device_ids: Sequence[int]) -> None:
        """Close the streams of devices just logged out, and tell whoever keeps their state."""
        if not device_ids:
            return
        await self.fanout.deliver(
            [Delivery(DeviceRevoked(dv), user_ids=(user_id,)) for dv in device_ids]
        )
        for hook in self.revocations:
            await hook.devices_revoked(user_id, list(device_ids))

    async def revoke(
        self, user_id: int, device_ids: Sequence[int] | None, keep: int = 0
    ) -> list[int]:
        """Log out devices of a user (None: all but `keep`); their streams close at once."""
        gone = await self.store.revoke_devices(user_id, device_ids, keep)
        await self.announce_revoked(user_id, gone)
        return gone

    async def logout(self, who: Principal) -> None:
        await self.revoke(who.user.user_id, [who.device_id])

    async def revoke_device(self, who: Principal, device_id: int) -> None:
        if device_id <= 0:
            raise InvalidArgument("device_id must be positive", "BAD_DEVICE")
        if not await self.revoke(who.user.user_id, [device_id]):
            raise NotFound(f"you have no logged-in device {device_id}", "DEVICE_NOT_FOUND")

    async def revoke_other_devices(self, who: Principal) -> list[int]:
        return await self.revoke(who.user.user_id, None, keep=who.device_id)

    async def devices(self, who: Principal) -> list[Device]:
        return [
            Device(
                r.device_id,
                r.name,
                r.create_time,
                r.last_active_time,
                r.device_id == who.device_id,
                r.platform,
                r.expire_time,
            )
            for r in await self.active_devices(who.user.user_id)
        ]

    async def active_devices(self, user_id: int) -> list[DeviceRow]:
        now = utcnow()
        return [
            r
            for r in await self.store.list_devices(user_id)
            if r.expire_time is None or r.expire_time > now
        ]

    # -- the account itself --------------------------------------------------------------

    async def check_password(self, who: Principal, password: str) -> UserRow:
        """The caller's account, if `password` is its password (throttled per device)."""
        key = f"device:{who.device_id}"
        self.device_throttle.check(key)
        row = (await self.store.get_users([who.user.user_id])).get(who.user.user_id)
        if row is None or row.deleted:
            raise NotFound("account no longer exists", "ACCOUNT_NOT_FOUND")
        if not await self._verify(row.password_hash, password):
            self.device_throttle.failed(key)
            raise Unauthenticated("the current password is wrong", "BAD_CREDENTIALS")
        self.device_throttle.succeeded(key)
        return row

    async def change_password(
        self, who: Principal, current: str, new: str, keep_other_devices: bool
    ) -> list[int]:
        row = await self.check_password(who, current)
        hashed = await self.hash_password(new, row.username)
        await self.store.set_password(row.user_id, hashed)
        if keep_other_devices:
            return []
        return await self.revoke(row.user_id, None, keep=who.device_id)

    async def me(self, who: Principal) -> Me:
        rows = await self.store.get_users([who.user.user_id])
        row = rows.get(who.user.user_id)
        if row is None:
            raise NotFound("account no longer exists")
        return Me(
            profile(row),
            who.device_id,
            row.phone or "",
            row.hide_last_seen,
            row.notification_preview,
            row.is_admin,
        )

    async def update_settings(
        self,
        who: Principal,
        display_name: str | None,
        hide_last_seen: bool | None,
        notification_preview: NotificationPreview | None = None,
        about: str | None = None,
        picture_id: str | None = None,
    ) -> None:
        """Change settings; a changed display name, about or picture is announced."""
        shown = rules.display_name(display_name) if display_name is not None else None
        line = about_text(about) if about is not None else None
        picture = await self.profiles.picture(who, picture_id) if picture_id is not None else None
        await self.store.update_user(who.user.user_id, shown, hide_last_seen, notification_preview)
        await self.store.set_profile(who.user.user_id, line, picture)
        if shown is not None or line is not None or picture is not None:
            await self.profiles.announce(who)
