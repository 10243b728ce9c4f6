"""The Store on SQLAlchemy 2 async Core: SQLite (WAL, synchronous=FULL), PostgreSQL, MariaDB."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import random
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc, pool
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from message_svc import schema as t
from message_svc.store import (
    DELETED_NAME,
    AddedDevice,
    Advance,
    Appended,
    AuditRow,
    DeviceRow,
    InviteRow,
    MemberChange,
    MemberRow,
    NewDevice,
    NewMessage,
    Refused,
    ReportRow,
    ThreadRow,
    ThreadSummary,
    UserRow,
)
from natter.domain import (
    DeviceAck,
    Message,
    MessageKind,
    PresenceUser,
    Role,
    SystemEvent,
    SystemKind,
    ThreadKind,
    User,
)
from natter.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from natter.ids import new_msg_id
from natter.metrics import NO_METRICS, GaugeFamily, Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How many times a write is tried when a concurrent writer got in its way.
_ATTEMPTS = 5
# The unique index on users.phone as each engine names it in a duplicate-key error:
# SQLite and MySQL "users.phone", PostgreSQL "users_phone_key", MariaDB "for key 'phone'".
_PHONE_CLASH = re.compile(r"users[._]phone|key 'phone'")
# Two first registrations at once both tried to record themselves as the first admin.
_FIRST_ADMIN_CLASH = re.compile(r"server_config|first_admin")

# Deadlocks and serialisation failures: the engine rolled the transaction back; run it again.
_PG_CONFLICTS = frozenset({"40001", "40P01"})
_MYSQL_CONFLICTS = frozenset({1213})  # ER_LOCK_DEADLOCK
_PG_DOWN = frozenset({"57P01", "57P02", "57P03"})


class _Conflict(Unavailable):
    """The database aborted the transaction to break a deadlock; it is safe to run it again."""


def _is_conflict(e: exc.DBAPIError) -> bool:
    if getattr(e.orig, "sqlstate", None) in _PG_CONFLICTS:  # asyncpg
        return True
    args: tuple[Any, ...] = getattr(e.orig, "args", ())
    return len(args) > 0 and args[0] in _MYSQL_CONFLICTS  # asyncmy: (errno, message)


def _is_unavailable(e: exc.DBAPIError) -> bool:
    """The database is down, starting, stopping or unreachable: the caller may try later."""
    if e.connection_invalidated or isinstance(e, exc.OperationalError | exc.InterfaceError):
        return True
    # PostgreSQL: class 08 (connection exception), 57P01-03 (shutting down, starting up).
    state = getattr(e.orig, "sqlstate", None) or ""
    return state.startswith("08") or state in _PG_DOWN


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Driver errors as the store's: deadlocks to retry, outages as UNAVAILABLE."""
    try:
        yield
    except exc.IntegrityError:
        raise
    except exc.DBAPIError as e:
        if _is_conflict(e):
            raise _Conflict("database conflict (deadlock); try again") from e
        if _is_unavailable(e):
            logger.warning("database unavailable: %s", e.orig)
            raise Unavailable(f"database unavailable: {type(e).__name__}") from e
        raise
    except OSError as e:
        raise Unavailable(f"database unavailable: {type(e).__name__}") from e


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))


def utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _user_json(user: User) -> list[Any]:
    return [user.user_id, user.username, user.display_name]


def _system_to_json(event_: SystemEvent | None) -> str | None:
    if event_ is None:
        return None
    return json.dumps(
        {
            "kind": event_.kind.value,
            "actor": _user_json(event_.actor),
            "users": [_user_json(u) for u in event_.users],
            "title": event_.title,
        },
        separators=(",", ":"),
    )


def _system_from_json(raw: str | None) -> SystemEvent | None:
    if not raw:
        return None
    data = json.loads(raw)
    return SystemEvent(
        kind=SystemKind(data["kind"]),
        actor=User(*data["actor"]),
        users=tuple(User(*u) for u in data["users"]),
        title=data["title"],
    )


def _user_row(r: Any, prefix: str = "") -> UserRow:
    def get(name: str) -> Any:
        return getattr(r, prefix + name)

    return UserRow(
        user_id=get("id"),
        username=get("username"),
        display_name=get("display_name"),
        phone=get("phone"),
        password_hash=get("password_hash"),
        hide_last_seen=bool(get("hide_last_seen")),
        last_seen_time=_utc(get("last_seen_time")),
        is_admin=bool(get("is_admin")),
        is_system=bool(get("is_system")),
        disable_time=_utc(get("disable_time")),
        delete_time=_utc(get("delete_time")),
        create_time=_utc(get("create_time")),
    )


# A user's columns under "u_" names, for joins whose other table also has `id`.
_USER_AS_U = tuple(c.label(f"u_{c.name}") for c in t.users.c)


def _presence_user(r: UserRow) -> PresenceUser:
    return PresenceUser(
        User(r.user_id, r.username, r.display_name), r.hide_last_seen, r.last_seen_time
    )


def _device_row(r: Any) -> DeviceRow:
    return DeviceRow(
        device_id=r.id,
        user_id=r.user_id,
        name=r.name,
        create_time=_aware(r.create_time),
        last_active_time=_utc(r.last_active_time),
        platform=r.platform or "",
        expire_time=_utc(r.expire_time),
    )


def _member_row(r: Any) -> MemberRow:
    return MemberRow(
        thread_id=r.thread_id,
        user_id=r.owner_id,
        role=Role(r.role),
        first_seq=r.first_seq,
        left_seq=r.left_seq,
        delivered_seq=r.delivered_seq,
        read_seq=r.read_seq,
        create_time=_aware(r.create_time),
        update_time=_aware(r.update_time),
    )


def _thread_row(r: Any) -> ThreadRow:
    return ThreadRow(
        thread_id=r.id,
        kind=ThreadKind(r.kind),
        title=r.title,
        last_seq=r.last_seq,
        update_time=_aware(r.update_time),
    )


_MESSAGE_COLUMNS = (
    t.messages.c.thread_id,
    t.messages.c.seq,
    t.messages.c.msg_id,
    t.messages.c.sender_id,
    t.messages.c.sender_device_id,
    t.messages.c.client_msg_id,
    t.messages.c.kind,
    t.messages.c.text,
    t.messages.c.system,
    t.messages.c.create_time,
    t.users.c.username,
    t.users.c.display_name,
)


def _message_select() -> sa.Select[Any]:
    return sa.select(*_MESSAGE_COLUMNS).join(t.users, t.users.c.id == t.messages.c.sender_id)


def _message(r: Any) -> Message:
    return Message(
        thread_id=r.thread_id,
        seq=r.seq,
        msg_id=r.msg_id,
        sender=User(r.sender_id, r.username, r.display_name),
        sender_device_id=r.sender_device_id,
        client_msg_id=r.client_msg_id,
        kind=MessageKind(r.kind),
        text=r.text,
        create_time=_aware(r.create_time),
        system=_system_from_json(r.system),
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class SqlStore:
    """One Store for every SQLAlchemy engine; dialect differences stay in a few helpers."""

    def __init__(self, url: str, *, pool_size: int = 5, metrics: Metrics = NO_METRICS) -> None:
        self.metrics = metrics
        self.url = sa.make_url(url)
        self.sqlite = self.url.get_backend_name() == "sqlite"
        self.engine: AsyncEngine | None = None
        self._pool_size = pool_size
        # SQLite has one writer; serialising writes here avoids busy retries.
        self._write_lock = asyncio.Lock()
        # SQLite's hot writes run whole on one thread of their own (see _write).
        self._sync_engine: Engine | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs.update(pool_size=self._pool_size, max_overflow=10, pool_pre_ping=True)
        # Statements' parameters (message text, token hashes) never appear in errors or logs.
        self.engine = create_async_engine(self.url, hide_parameters=True, **kwargs)
        if self.sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        if self.sqlite and self.url.database not in (None, "", ":memory:"):
            self._sync_engine = sa.create_engine(
                self.url.set(drivername="sqlite+pysqlite"),
                poolclass=pool.StaticPool,
                connect_args={"check_same_thread": False},
                hide_parameters=True,
            )
            event.listen(self._sync_engine, "connect", _sqlite_pragmas)
            self._writer = concurrent.futures.ThreadPoolExecutor(1, "sqlite-writer")
        async with self._tx() as conn:
            applied = await t.migrate(conn)
        if applied:
            logger.info("applied migrations %s to %s", applied, self.url.render_as_string())
        self.metrics.gauges(self._pool_gauges)

    def _pool_gauges(self) -> list[GaugeFamily]:
        """Connections of the async engine's pool: in use, idle, beyond the pool's size."""
        if self.engine is None:
            return []
        p = self.engine.sync_engine.pool
        kinds = (("in_use", "checkedout"), ("idle", "checkedin"), ("overflow", "overflow"))
        family = GaugeFamily(
            "natter_db_pool_connections",
            "Database connections of this process's pool, by state",
            labels=["state"],
        )
        for state, method in kinds:
            value = getattr(p, method, None)
            if callable(value):
                family.add_metric([state], max(0, int(value())))
        size = getattr(p, "size", None)
        limit = GaugeFamily("natter_db_pool_size", "Connections the pool keeps open at most")
        limit.add_metric([], int(size()) if callable(size) else 0)
        return [family, limit]

    async def close(self) -> None:
        self.metrics.forget(self._pool_gauges)
        if self._writer is not None:
            assert self._sync_engine is not None
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self._sync_engine.dispose
            )
            self._writer.shutdown()
            self._writer = self._sync_engine = None
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in one transaction; on SQLite, the whole transaction in one thread hop.

        Through aiosqlite each statement is a round trip between the event loop and the
        driver's thread, and a busy loop makes each one wait its turn: a group commit of a
        few dozen statements took tens of milliseconds. Here the transaction runs start to
        finish on a writer thread of its own, with the same SQLAlchemy Core statements.
        Other engines run fn through run_sync over their async driver.
        """
        if self._writer is None:
            assert self.engine is not None, "store is not open"
            lock = self._write_lock if self.sqlite else contextlib.nullcontext()
            with _errors():
                async with lock, self.engine.connect() as aconn:
                    atx = await aconn.begin()
                    try:
                        result = await aconn.run_sync(fn)
                    except BaseException:
                        # The connection may be gone (the database restarting): the error
                        # that says so is the one to raise, not the rollback's.
                        with contextlib.suppress(Exception):
                            await atx.rollback()
                        raise
                    started = time.perf_counter()
                    await atx.commit()
                    self.metrics.db_commit_seconds.observe(time.perf_counter() - started)
                    return result
        engine = self._sync_engine
        assert engine is not None

        def run() -> tuple[T, float]:
            with _errors(), engine.connect() as conn:
                tx = conn.begin()
                try:
                    out = fn(conn)
                except BaseException:
                    with contextlib.suppress(Exception):
                        tx.rollback()
                    raise
                started = time.perf_counter()
                tx.commit()
                return out, time.perf_counter() - started

        async with self._write_lock:
            out, commit = await asyncio.get_running_loop().run_in_executor(self._writer, run)
        self.metrics.db_commit_seconds.observe(commit)
        return out

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        assert self.engine is not None, "store is not open"
        lock = self._write_lock if self.sqlite else contextlib.nullcontext()
        with _errors():
            async with lock, self.engine.begin() as conn:
                yield conn

    async def _retry(self, write: Callable[[], Awaitable[T]], *, integrity: bool = False) -> T:
        """Run a write again when a deadlock (or, if asked, a concurrent insert) aborted it."""
        for attempt in range(_ATTEMPTS):
            try:
                return await write()
            except _Conflict:
                if attempt == _ATTEMPTS - 1:
                    raise
                await _backoff(attempt)
            except exc.IntegrityError:
                # A concurrent writer stored the same key first; the next attempt sees it.
                if not integrity or attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        assert self.engine is not None, "store is not open"
        with _errors():
            async with self.engine.connect() as conn:
                yield conn

    # -- users ---------------------------------------------------------------------------

    async def create_user(
        self,
        username: str,
        display_name: str,
        phone: str | None,
        password_hash: str,
        *,
        first_becomes_admin: bool = False,
        is_admin: bool = False,
        is_system: bool = False,
        invite_hash: str = "",
    ) -> UserRow:
        args = (username, display_name, phone, password_hash)
        flags = (first_becomes_admin, is_admin, is_system, invite_hash)
        for attempt in range(_ATTEMPTS):
            try:
                return await self._retry(
                    lambda: self._write(lambda conn: _create_user(conn, *args, *flags))
                )
            except exc.IntegrityError as e:
                text = str(e.orig)
                if _FIRST_ADMIN_CLASH.search(text) and attempt < _ATTEMPTS - 1:
                    continue  # two first registrations at once: the other one was first
                what = "phone number" if phone and _PHONE_CLASH.search(text) else "username"
                raise AlreadyExists(f"{what} is already registered", "ACCOUNT_EXISTS") from e
        raise AssertionError("unreachable")

    async def find_users(self, identifiers: Sequence[str]) -> dict[str, UserRow]:
        if not identifiers:
            return {}
        ids = list(dict.fromkeys(identifiers))
        u = t.users
        out: dict[str, UserRow] = {}
        async with self._read() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = await conn.execute(
                    sa.select(u).where(
                        sa.or_(u.c.username.in_(chunk), u.c.phone.in_(chunk)),
                        u.c.is_system == sa.false(),
                    )
                )
                for r in rows:
                    row = _user_row(r)
                    out[row.username] = row
                    if row.phone:
                        out[row.phone] = row
        return {i: out[i] for i in ids if i in out}

    async def get_users(self, user_ids: Sequence[int]) -> dict[int, UserRow]:
        if not user_ids:
            return {}
        u = t.users
        async with self._read() as conn:
            rows = await conn.execute(sa.select(u).where(u.c.id.in_(list(set(user_ids)))))
            return {r.id: _user_row(r) for r in rows}

    async def find_presence_users(self, identifiers: Sequence[str]) -> dict[str, PresenceUser]:
        """presence_svc's view of find_users: the public user, last-seen privacy and time."""
        return {i: _presence_user(r) for i, r in (await self.find_users(identifiers)).items()}

    async def get_presence_users(self, user_ids: Sequence[int]) -> dict[int, PresenceUser]:
        return {i: _presence_user(r) for i, r in (await self.get_users(user_ids)).items()}

    async def update_user(
        self, user_id: int, display_name: str | None, hide_last_seen: bool | None
    ) -> None:
        values: dict[str, Any] = {}
        if display_name is not None:
            values["display_name"] = display_name
        if hide_last_seen is not None:
            values["hide_last_seen"] = hide_last_seen
        if not values:
            return
        async with self._tx() as conn:
            await conn.execute(t.users.update().where(t.users.c.id == user_id).values(**values))

    async def set_last_seen(self, seen: Sequence[tuple[int, datetime]]) -> None:
        if not seen:
            return
        u = t.users
        async with self._tx() as conn:
            await conn.execute(
                u.update()
                .where(u.c.id == sa.bindparam("uid"))
                .values(last_seen_time=sa.bindparam("ts")),
                [{"uid": uid, "ts": ts} for uid, ts in seen],
            )

    # -- devices -------------------------------------------------------------------------

    async def create_device(self, user_id: int, name: str, token_hash: str) -> DeviceRow:
        now = utcnow()
        async with self._tx() as conn:
            res = await conn.execute(
                t.devices.insert().values(
                    user_id=user_id, name=name, token_hash=token_hash, create_time=now
                )
            )
            device_id = int(res.inserted_primary_key[0])  # type: ignore[index]
        return DeviceRow(device_id, user_id, name, now, None)

    async def device_by_token(self, token_hash: str) -> tuple[UserRow, DeviceRow] | None:
        d, u = t.devices, t.users
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(d, *_USER_AS_U)
                    .join(u, u.c.id == d.c.user_id)
                    .where(d.c.token_hash == token_hash, d.c.revoke_time.is_(None))
                )
            ).first()
        if row is None:
            return None
        return _user_row(row, "u_"), _device_row(row)

    async def revoke_device(self, device_id: int) -> bool:
        d = t.devices
        async with self._tx() as conn:
            res = await conn.execute(
                d.update()
                .where(d.c.id == device_id, d.c.revoke_time.is_(None))
                .values(revoke_time=utcnow())
            )
            return bool(res.rowcount)

    async def list_devices(self, user_id: int) -> list[DeviceRow]:
        d = t.devices
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(d)
                .where(d.c.user_id == user_id, d.c.revoke_time.is_(None))
                .order_by(d.c.id)
            )
            return [_device_row(r) for r in rows]

    async def touch_devices(self, device_ids: Sequence[int], when: datetime) -> None:
        if not device_ids:
            return
        d = t.devices
        async with self._tx() as conn:
            await conn.execute(
                d.update().where(d.c.id.in_(list(device_ids))).values(last_active_time=when)
            )

    async def add_device(self, new: NewDevice) -> AddedDevice:
        return await self._retry(lambda: self._write(lambda conn: _add_device(conn, new)))

    async def revoke_devices(
        self, user_id: int, device_ids: Sequence[int] | None, keep: int = 0
    ) -> list[int]:
        d = t.devices
        where = [d.c.user_id == user_id, d.c.revoke_time.is_(None)]
        if device_ids is not None:
            if not device_ids:
                return []
            where.append(d.c.id.in_(list(device_ids)))
        if keep:
            where.append(d.c.id != keep)
        async with self._tx() as conn:
            ids = [int(x) for x in (await conn.execute(sa.select(d.c.id).where(*where))).scalars()]
            if ids:
                await conn.execute(d.update().where(d.c.id.in_(ids)).values(revoke_time=utcnow()))
        return sorted(ids)

    async def renew_devices(
        self, device_ids: Sequence[int], now: datetime, expire_time: datetime
    ) -> set[int]:
        if not device_ids:
            return set()
        d, u = t.devices, t.users
        valid: set[int] = set()
        ids = list(dict.fromkeys(device_ids))
        async with self._tx() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = await conn.execute(
                    sa.select(d.c.id)
                    .join(u, u.c.id == d.c.user_id)
                    .where(
                        d.c.id.in_(chunk),
                        d.c.revoke_time.is_(None),
                        sa.or_(d.c.expire_time.is_(None), d.c.expire_time > now),
                        u.c.disable_time.is_(None),
                        u.c.delete_time.is_(None),
                    )
                )
                found = [int(x) for x in rows.scalars()]
                if found:
                    await conn.execute(
                        d.update()
                        .where(d.c.id.in_(found))
                        .values(last_active_time=now, expire_time=expire_time)
                    )
                valid.update(found)
        return valid

    # -- accounts: passwords, roles, deletion ---------------------------------------------

    async def set_password(self, user_id: int, password_hash: str) -> None:
        u = t.users
        async with self._tx() as conn:
            await conn.execute(
                u.update().where(u.c.id == user_id).values(password_hash=password_hash)
            )

    async def set_admin(self, user_id: int, is_admin: bool) -> bool:
        u = t.users
        async with self._tx() as conn:
            res = await conn.execute(
                u.update()
                .where(u.c.id == user_id, u.c.is_admin == (not is_admin), u.c.delete_time.is_(None))
                .values(is_admin=is_admin)
            )
            return bool(res.rowcount)

    async def set_disabled(self, user_id: int, disabled: bool) -> bool:
        u = t.users
        current = u.c.disable_time.is_(None) if disabled else u.c.disable_time.is_not(None)
        async with self._tx() as conn:
            res = await conn.execute(
                u.update()
                .where(u.c.id == user_id, current, u.c.delete_time.is_(None))
                .values(disable_time=utcnow() if disabled else None)
            )
            return bool(res.rowcount)

    async def erase_user(self, user_id: int) -> list[int]:
        return await self._retry(lambda: self._write(lambda conn: _erase_user(conn, user_id)))

    async def list_users(self, query: str, after_id: int, limit: int) -> list[UserRow]:
        u = t.users
        q = sa.select(u).where(
            u.c.id > after_id, u.c.is_system == sa.false(), u.c.delete_time.is_(None)
        )
        if query:
            like = f"%{query.lower()}%"
            q = q.where(
                sa.or_(
                    u.c.username.like(like),
                    sa.func.lower(u.c.display_name).like(like),
                    u.c.phone.like(like),
                )
            )
        async with self._read() as conn:
            rows = await conn.execute(q.order_by(u.c.id).limit(limit))
            return [_user_row(r) for r in rows]

    async def get_config(self, key: str) -> str | None:
        c = t.server_config
        async with self._read() as conn:
            value = (
                await conn.execute(sa.select(c.c.value).where(c.c.key == key))
            ).scalar_one_or_none()
        return None if value is None else str(value)

    async def set_config(self, key: str, value: str | None) -> None:
        c = t.server_config
        async with self._tx() as conn:
            if value is None:
                await conn.execute(c.delete().where(c.c.key == key))
                return
            res = await conn.execute(c.update().where(c.c.key == key).values(value=value))
            if not res.rowcount:
                await conn.execute(c.insert().values(key=key, value=value))

    # -- blocks and reports ----------------------------------------------------------------

    async def block(self, blocker_id: int, blocked_id: int) -> bool:
        b = t.blocks
        try:
            async with self._tx() as conn:
                found = (
                    await conn.execute(
                        sa.select(b.c.blocker_id).where(
                            b.c.blocker_id == blocker_id, b.c.blocked_id == blocked_id
                        )
                    )
                ).first()
                if found is not None:
                    return False
                await conn.execute(
                    b.insert().values(
                        blocker_id=blocker_id, blocked_id=blocked_id, create_time=utcnow()
                    )
                )
                return True
        except exc.IntegrityError:
            return False  # blocked twice at once: the other insert made it

    async def unblock(self, blocker_id: int, blocked_id: int) -> bool:
        b = t.blocks
        async with self._tx() as conn:
            res = await conn.execute(
                b.delete().where(b.c.blocker_id == blocker_id, b.c.blocked_id == blocked_id)
            )
            return bool(res.rowcount)

    async def list_blocked(self, blocker_id: int, after_username: str, limit: int) -> list[UserRow]:
        b, u = t.blocks, t.users
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(u)
                .join(b, b.c.blocked_id == u.c.id)
                .where(b.c.blocker_id == blocker_id, u.c.username > after_username)
                .order_by(u.c.username)
                .limit(limit)
            )
            return [_user_row(r) for r in rows]

    async def blocked_by(self, user_id: int, among: Sequence[int]) -> set[int]:
        if not among:
            return set()
        b = t.blocks
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(b.c.blocker_id).where(
                    b.c.blocked_id == user_id, b.c.blocker_id.in_(list(set(among)))
                )
            )
            return {int(x) for x in rows.scalars()}

    async def block_links(self, user_ids: Sequence[int]) -> dict[int, set[int]]:
        if not user_ids:
            return {}
        b = t.blocks
        ids = list(set(user_ids))
        out: dict[int, set[int]] = defaultdict(set)
        async with self._read() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = await conn.execute(
                    sa.select(b.c.blocker_id, b.c.blocked_id).where(
                        sa.or_(b.c.blocker_id.in_(chunk), b.c.blocked_id.in_(chunk))
                    )
                )
                for r in rows:
                    out[int(r.blocker_id)].add(int(r.blocked_id))
                    out[int(r.blocked_id)].add(int(r.blocker_id))
        return {k: v for k, v in out.items() if k in set(ids)}

    async def create_report(
        self,
        reporter_id: int,
        subject_id: int,
        thread_id: int,
        reason: int,
        text: str,
        messages: Sequence[Message],
    ) -> int:
        r, rm = t.reports, t.report_messages
        async with self._tx() as conn:
            res = await conn.execute(
                r.insert().values(
                    reporter_id=reporter_id,
                    subject_id=subject_id,
                    thread_id=thread_id or None,
                    reason=reason,
                    text=text,
                    create_time=utcnow(),
                    resolution="",
                )
            )
            report_id = int(res.inserted_primary_key[0])  # type: ignore[index]
            if messages:
                await conn.execute(
                    rm.insert(),
                    [
                        dict(
                            report_id=report_id,
                            thread_id=m.thread_id,
                            seq=m.seq,
                            msg_id=m.msg_id,
                            sender_id=m.sender.user_id,
                            sender_name=m.sender.display_name[:64],
                            kind=m.kind.value,
                            text=m.text,
                            create_time=m.create_time,
                        )
                        for m in messages
                    ],
                )
        return report_id

    def _report_select(self) -> sa.Select[Any]:
        r = t.reports
        a, b = t.users.alias("reporter"), t.users.alias("subject")
        return (
            sa.select(
                r,
                a.c.username.label("a_username"),
                a.c.display_name.label("a_display_name"),
                b.c.username.label("b_username"),
                b.c.display_name.label("b_display_name"),
            )
            .join(a, a.c.id == r.c.reporter_id)
            .join(b, b.c.id == r.c.subject_id)
        )

    async def list_reports(self, open_only: bool, after_id: int, limit: int) -> list[ReportRow]:
        r = t.reports
        q = self._report_select().where(r.c.id > after_id)
        if open_only:
            q = q.where(r.c.resolve_time.is_(None))
        async with self._read() as conn:
            rows = await conn.execute(q.order_by(r.c.id).limit(limit))
            return [_report_row(x) for x in rows]

    async def get_report(self, report_id: int) -> ReportRow | None:
        r, rm = t.reports, t.report_messages
        async with self._read() as conn:
            row = (await conn.execute(self._report_select().where(r.c.id == report_id))).first()
            if row is None:
                return None
            copies = await conn.execute(
                sa.select(rm).where(rm.c.report_id == report_id).order_by(rm.c.thread_id, rm.c.seq)
            )
            messages = tuple(
                Message(
                    thread_id=m.thread_id,
                    seq=m.seq,
                    msg_id=m.msg_id,
                    sender=User(m.sender_id, "", m.sender_name),
                    sender_device_id=0,
                    client_msg_id="",
                    kind=MessageKind(m.kind),
                    text=m.text,
                    create_time=_aware(m.create_time),
                )
                for m in copies
            )
        report = _report_row(row)
        return ReportRow(**{**_fields(report), "messages": messages})

    async def resolve_report(
        self, report_id: int, resolver_id: int | None, resolution: str
    ) -> bool:
        r = t.reports
        async with self._tx() as conn:
            res = await conn.execute(
                r.update()
                .where(r.c.id == report_id, r.c.resolve_time.is_(None))
                .values(resolve_time=utcnow(), resolver_id=resolver_id, resolution=resolution)
            )
            return bool(res.rowcount)

    # -- invites and the audit log ---------------------------------------------------------

    async def create_invite(
        self, code_hash: str, hint: str, creator_id: int | None, note: str, expire_time: datetime
    ) -> None:
        async with self._tx() as conn:
            await conn.execute(
                t.invites.insert().values(
                    code_hash=code_hash,
                    hint=hint,
                    creator_id=creator_id,
                    note=note,
                    create_time=utcnow(),
                    expire_time=expire_time,
                )
            )

    async def list_invites(self, include_done: bool) -> list[InviteRow]:
        i = t.invites
        q = sa.select(i)
        if not include_done:
            q = q.where(
                i.c.use_time.is_(None), i.c.revoke_time.is_(None), i.c.expire_time > utcnow()
            )
        async with self._read() as conn:
            rows = await conn.execute(q.order_by(i.c.create_time, i.c.hint))
            return [
                InviteRow(
                    hint=r.hint,
                    creator_id=r.creator_id,
                    note=r.note,
                    create_time=_aware(r.create_time),
                    expire_time=_aware(r.expire_time),
                    use_time=_utc(r.use_time),
                    used_by_id=r.used_by_id,
                    revoke_time=_utc(r.revoke_time),
                )
                for r in rows
            ]

    async def revoke_invite(self, hint: str) -> bool:
        i = t.invites
        async with self._tx() as conn:
            res = await conn.execute(
                i.update()
                .where(i.c.hint == hint, i.c.use_time.is_(None), i.c.revoke_time.is_(None))
                .values(revoke_time=utcnow())
            )
            return bool(res.rowcount)

    async def audit(
        self, actor_id: int | None, actor: str, action: str, target: str, detail: str
    ) -> None:
        async with self._tx() as conn:
            await conn.execute(
                t.audit_log.insert().values(
                    time=utcnow(),
                    actor_id=actor_id,
                    actor=actor[:96],
                    action=action[:48],
                    target=target[:128],
                    detail=detail[:1024],
                )
            )

    async def list_audit(self, before_id: int, limit: int) -> list[AuditRow]:
        a = t.audit_log
        q = sa.select(a)
        if before_id > 0:
            q = q.where(a.c.id < before_id)
        async with self._read() as conn:
            rows = await conn.execute(q.order_by(a.c.id.desc()).limit(limit))
            return [
                AuditRow(
                    entry_id=r.id,
                    time=_aware(r.time),
                    actor_id=r.actor_id,
                    actor=r.actor,
                    action=r.action,
                    target=r.target,
                    detail=r.detail,
                )
                for r in rows
            ]

    # -- contacts ------------------------------------------------------------------------

    async def add_contact(self, owner_id: int, contact_id: int, alias: str) -> None:
        c = t.contacts
        async with self._tx() as conn:
            res = await conn.execute(
                c.update()
                .where(c.c.owner_id == owner_id, c.c.contact_id == contact_id)
                .values(alias=alias)
            )
            if not res.rowcount:
                await conn.execute(
                    c.insert().values(
                        owner_id=owner_id, contact_id=contact_id, alias=alias, create_time=utcnow()
                    )
                )

    async def remove_contact(self, owner_id: int, contact_id: int) -> bool:
        c = t.contacts
        async with self._tx() as conn:
            res = await conn.execute(
                c.delete().where(c.c.owner_id == owner_id, c.c.contact_id == contact_id)
            )
            return bool(res.rowcount)

    async def list_contacts(
        self, owner_id: int, after_username: str, limit: int
    ) -> list[tuple[UserRow, str]]:
        c, u = t.contacts, t.users
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(u, c.c.alias)
                .join(c, c.c.contact_id == u.c.id)
                .where(c.c.owner_id == owner_id, u.c.username > after_username)
                .order_by(u.c.username)
                .limit(limit)
            )
            return [(_user_row(r), r.alias) for r in rows]

    async def watchers(self, user_ids: Sequence[int]) -> dict[int, list[int]]:
        if not user_ids:
            return {}
        c = t.contacts
        out: dict[int, list[int]] = defaultdict(list)
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(c.c.contact_id, c.c.owner_id).where(c.c.contact_id.in_(list(user_ids)))
            )
            for r in rows:
                out[r.contact_id].append(r.owner_id)
        return dict(out)

    async def mutual_contacts(self, user_ids: Sequence[int]) -> dict[int, set[int]]:
        if not user_ids:
            return {}
        mine, back = t.contacts.alias("mine"), t.contacts.alias("back")
        ids = list(set(user_ids))
        out: dict[int, set[int]] = defaultdict(set)
        async with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = await conn.execute(
                    sa.select(mine.c.owner_id, mine.c.contact_id)
                    .join(
                        back,
                        sa.and_(
                            back.c.owner_id == mine.c.contact_id,
                            back.c.contact_id == mine.c.owner_id,
                        ),
                    )
                    .where(mine.c.owner_id.in_(ids[start : start + 500]))
                )
                for r in rows:
                    out[int(r.owner_id)].add(int(r.contact_id))
        return dict(out)

    async def mutual_contacts_among(self, owner_id: int, user_ids: Sequence[int]) -> set[int]:
        if not user_ids:
            return set()
        mine, back = t.contacts.alias("mine"), t.contacts.alias("back")
        ids = list(dict.fromkeys(user_ids))
        out: set[int] = set()
        async with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = await conn.execute(
                    sa.select(mine.c.contact_id)
                    .join(
                        back,
                        sa.and_(
                            back.c.owner_id == mine.c.contact_id,
                            back.c.contact_id == mine.c.owner_id,
                        ),
                    )
                    .where(
                        mine.c.owner_id == owner_id,
                        mine.c.contact_id.in_(ids[start : start + 500]),
                    )
                )
                out.update(int(x) for x in rows.scalars())
        return out

    # -- threads -------------------------------------------------------------------------

    async def direct_thread(self, a: int, b: int) -> int:
        lo, hi = sorted((a, b))
        key = f"{lo}:{hi}"
        th, m = t.threads, t.thread_members
        async with self._read() as conn:
            found = (
                await conn.execute(sa.select(th.c.id).where(th.c.direct_key == key))
            ).scalar_one_or_none()
        if found is not None:
            return int(found)
        now = utcnow()
        try:
            async with self._tx() as conn:
                res = await conn.execute(
                    th.insert().values(
                        kind=ThreadKind.DIRECT.value,
                        title="",
                        last_seq=0,
                        direct_key=key,
                        create_time=now,
                        update_time=now,
                    )
                )
                thread_id = int(res.inserted_primary_key[0])  # type: ignore[index]
                await conn.execute(
                    m.insert(),
                    [
                        dict(
                            owner_id=uid,
                            thread_id=thread_id,
                            role=Role.MEMBER.value,
                            nickname="",
                            first_seq=1,
                            left_seq=None,
                            delivered_seq=0,
                            read_seq=0,
                            create_time=now,
                            update_time=now,
                        )
                        for uid in dict.fromkeys((lo, hi))
                    ],
                )
                return thread_id
        except exc.IntegrityError:
            # Another request created the pair's thread first: use it.
            async with self._read() as conn:
                return int(
                    (
                        await conn.execute(sa.select(th.c.id).where(th.c.direct_key == key))
                    ).scalar_one()
                )

    async def get_thread(self, thread_id: int) -> ThreadRow | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(t.threads).where(t.threads.c.id == thread_id))
            ).first()
        return _thread_row(row) if row is not None else None

    async def get_member(self, thread_id: int, user_id: int) -> MemberRow | None:
        m = t.thread_members
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(m).where(m.c.thread_id == thread_id, m.c.owner_id == user_id)
                )
            ).first()
        return _member_row(row) if row is not None else None

    async def list_members(self, thread_id: int) -> list[MemberRow]:
        m = t.thread_members
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(m)
                .where(m.c.thread_id == thread_id)
                .order_by(m.c.create_time, m.c.owner_id)
            )
            return [_member_row(r) for r in rows]

    async def active_member_ids(self, thread_id: int) -> list[int]:
        m = t.thread_members
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(m.c.owner_id).where(m.c.thread_id == thread_id, m.c.left_seq.is_(None))
            )
            return [int(x) for x in rows.scalars()]

    async def user_threads(self, user_id: int) -> list[MemberRow]:
        m = t.thread_members
        async with self._read() as conn:
            rows = await conn.execute(sa.select(m).where(m.c.owner_id == user_id))
            return [_member_row(r) for r in rows]

    async def user_groups(self, user_id: int) -> list[int]:
        m, th = t.thread_members, t.threads
        q = (
            sa.select(m.c.thread_id)
            .join(th, th.c.id == m.c.thread_id)
            .where(
                m.c.owner_id == user_id, m.c.left_seq.is_(None), th.c.kind == ThreadKind.GROUP.value
            )
            .order_by(m.c.thread_id)
        )
        async with self._read() as conn:
            return [int(x) for x in (await conn.execute(q)).scalars()]

    async def list_threads(
        self, user_id: int, before: tuple[datetime, int] | None, limit: int
    ) -> list[ThreadSummary]:
        m, th, msg = t.thread_members, t.threads, t.messages
        q = (
            sa.select(
                m, th.c.kind, th.c.title, th.c.last_seq, th.c.update_time.label("t_update"), th.c.id
            )
            .join(th, th.c.id == m.c.thread_id)
            .where(m.c.owner_id == user_id)
        )
        if before is not None:
            when, tid = before
            q = q.where(
                sa.or_(
                    m.c.update_time < when, sa.and_(m.c.update_time == when, m.c.thread_id < tid)
                )
            )
        q = q.order_by(m.c.update_time.desc(), m.c.thread_id.desc()).limit(limit)
        out: list[ThreadSummary] = []
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
            if not rows:
                return []
            # Four queries for the page, not three per thread: last messages, unread counts
            # and member counts are read for every thread of the page at once.
            pages: list[tuple[MemberRow, ThreadRow, int, int]] = []
            for r in rows:
                member = _member_row(r)
                thread = ThreadRow(
                    r.thread_id, ThreadKind(r.kind), r.title, r.last_seq, _aware(r.t_update)
                )
                hi = member.last_visible(thread.last_seq)
                lo = max(member.read_seq, member.first_seq - 1)
                pages.append((member, thread, lo, hi))
            ids = [th_.thread_id for _, th_, _, _ in pages]
            wanted = {(th_.thread_id, hi) for m_, th_, _, hi in pages if hi >= m_.first_seq}
            lasts: dict[int, Message] = {}
            if wanted:
                found = await conn.execute(
                    _message_select().where(
                        msg.c.thread_id.in_([t_ for t_, _ in wanted]),
                        msg.c.seq.in_(list({s_ for _, s_ in wanted})),
                    )
                )
                for lr in _pairs(found, wanted, "thread_id", "seq"):
                    lasts[int(lr.thread_id)] = _message(lr)
            unread: dict[int, int] = {}
            spans = [(th_.thread_id, lo, hi) for _, th_, lo, hi in pages if hi > lo]
            if spans:
                counted = await conn.execute(
                    sa.select(msg.c.thread_id, sa.func.count())
                    .where(
                        sa.or_(
                            *(
                                sa.and_(msg.c.thread_id == t_, msg.c.seq > lo, msg.c.seq <= hi)
                                for t_, lo, hi in spans
                            )
                        ),
                        msg.c.sender_id != user_id,
                    )
                    .group_by(msg.c.thread_id)
                )
                unread = {int(t_): int(n) for t_, n in counted}
            members = await conn.execute(
                sa.select(
                    m.c.thread_id,
                    sa.func.count(),
                    sa.func.min(m.c.owner_id),
                    sa.func.max(m.c.owner_id),
                )
                .where(m.c.thread_id.in_(ids), m.c.left_seq.is_(None))
                .group_by(m.c.thread_id)
            )
            sizes = {int(t_): (int(n), int(lo_id), int(hi_id)) for t_, n, lo_id, hi_id in members}
            for member, thread, _, _ in pages:
                count, first, second = sizes.get(thread.thread_id, (0, user_id, user_id))
                peer = None
                if thread.kind is ThreadKind.DIRECT:
                    peer = second if first == user_id else first
                out.append(
                    ThreadSummary(
                        thread,
                        member,
                        count,
                        peer,
                        lasts.get(thread.thread_id),
                        unread.get(thread.thread_id, 0),
                    )
                )
        return out

    async def create_group(
        self, title: str, creator_id: int, member_ids: Sequence[int], event: NewMessage
    ) -> tuple[int, Message]:
        return await self._write(
            lambda conn: _create_group(conn, title, creator_id, member_ids, event)
        )

    async def change_group(
        self,
        thread_id: int,
        changes: Sequence[MemberChange],
        title: str | None,
        event: NewMessage,
        *,
        max_members: int | None = None,
    ) -> Message:
        return await self._retry(
            lambda: self._write(
                lambda conn: _change_group(conn, thread_id, changes, title, event, max_members)
            )
        )

    # -- messages ------------------------------------------------------------------------

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended | Refused]:
        # A concurrent writer (another replica) may store one of these keys first; the next
        # attempt finds it and answers with the original.
        try:
            return await self._write(lambda conn: _append(conn, batch, dedupe=False))
        except exc.IntegrityError:
            pass  # a retried send (or another replica stored a key first): look them up
        return await self._retry(
            lambda: self._write(lambda conn: _append(conn, batch, dedupe=True)), integrity=True
        )

    async def prune_messages(self, thread_id: int, below_seq: int) -> int:
        """Delete a thread's messages below a seq (the delivery canary's own thread only)."""
        msg = t.messages
        async with self._tx() as conn:
            res = await conn.execute(
                msg.delete().where(msg.c.thread_id == thread_id, msg.c.seq < below_seq)
            )
            return int(res.rowcount or 0)

    async def list_messages(
        self, thread_id: int, after_seq: int, before_seq: int, limit: int, newest: bool
    ) -> list[Message]:
        msg = t.messages
        q = _message_select().where(msg.c.thread_id == thread_id, msg.c.seq > after_seq)
        if before_seq > 0:
            q = q.where(msg.c.seq < before_seq)
        q = q.order_by(msg.c.seq.desc() if newest else msg.c.seq).limit(limit)
        async with self._read() as conn:
            rows = [_message(r) for r in await conn.execute(q)]
        if newest:
            rows.reverse()
        return rows

    async def messages_after(
        self, ranges: Sequence[tuple[int, int, int]], limit: int
    ) -> list[Message]:
        msg, th = t.messages, t.threads
        out: list[Message] = []
        async with self._read() as conn:
            # One look at every thread's last seq first: a device in hundreds of threads
            # reads only those with something new, not one query per thread per connect.
            ids = [r[0] for r in ranges]
            last: dict[int, int] = {}
            for start in range(0, len(ids), 500):
                rows = await conn.execute(
                    sa.select(th.c.id, th.c.last_seq).where(th.c.id.in_(ids[start : start + 500]))
                )
                last.update((int(r.id), int(r.last_seq)) for r in rows)
            for thread_id, after, upto in ranges:
                if len(out) >= limit:
                    break
                if last.get(thread_id, 0) <= after:
                    continue
                q = (
                    _message_select()
                    .where(msg.c.thread_id == thread_id, msg.c.seq > after, msg.c.seq <= upto)
                    .order_by(msg.c.seq)
                    .limit(limit - len(out))
                )
                out.extend(_message(r) for r in await conn.execute(q))
        return out

    # -- cursors -------------------------------------------------------------------------

    async def device_cursors(self, device_id: int) -> dict[int, int]:
        c = t.device_cursors
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(c.c.thread_id, c.c.delivered_seq).where(c.c.device_id == device_id)
            )
            return {int(r.thread_id): int(r.delivered_seq) for r in rows}

    async def advance_delivered(self, acks: Sequence[DeviceAck]) -> list[Advance]:
        return await self._retry(
            lambda: self._write(lambda conn: _advance_delivered(conn, acks)), integrity=True
        )

    async def advance_read(self, user_id: int, thread_id: int, seq: int) -> bool:
        m = t.thread_members
        async with self._tx() as conn:
            res = await conn.execute(
                m.update()
                .where(m.c.owner_id == user_id, m.c.thread_id == thread_id, m.c.read_seq < seq)
                .values(
                    read_seq=seq,
                    delivered_seq=sa.func.max(m.c.delivered_seq, seq)
                    if self.sqlite
                    else sa.func.greatest(m.c.delivered_seq, seq),
                )
            )
            return bool(res.rowcount)

    # -- who shares what (presence privacy and audience) ---------------------------------

    async def contacts_among(self, owner_id: int, user_ids: Sequence[int]) -> set[int]:
        """Which of user_ids the owner has as contacts."""
        c = t.contacts
        ids = list(dict.fromkeys(user_ids))
        out: set[int] = set()
        async with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = await conn.execute(
                    sa.select(c.c.contact_id).where(
                        c.c.owner_id == owner_id, c.c.contact_id.in_(ids[start : start + 500])
                    )
                )
                out.update(int(x) for x in rows.scalars())
        return out

    async def thread_peers_among(self, user_id: int, user_ids: Sequence[int]) -> set[int]:
        """Which of user_ids are active members of a thread the user is an active member of."""
        mine, theirs = t.thread_members.alias("mine"), t.thread_members.alias("theirs")
        ids = list(dict.fromkeys(user_ids))
        out: set[int] = set()
        async with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = await conn.execute(
                    sa.select(theirs.c.owner_id)
                    .distinct()
                    .join(mine, mine.c.thread_id == theirs.c.thread_id)
                    .where(
                        mine.c.owner_id == user_id,
                        mine.c.left_seq.is_(None),
                        theirs.c.left_seq.is_(None),
                        theirs.c.owner_id.in_(ids[start : start + 500]),
                    )
                )
                out.update(int(x) for x in rows.scalars())
        return out

    async def small_thread_peers(
        self, user_ids: Sequence[int], max_members: int
    ) -> dict[int, set[int]]:
        """For each user, the other active members of their threads with at most max_members."""
        m = t.thread_members
        ids = list(dict.fromkeys(user_ids))
        threads_of: dict[int, set[int]] = defaultdict(set)
        out: dict[int, set[int]] = {}
        async with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = await conn.execute(
                    sa.select(m.c.thread_id, m.c.owner_id).where(
                        m.c.owner_id.in_(ids[start : start + 500]), m.c.left_seq.is_(None)
                    )
                )
                for r in rows:
                    threads_of[int(r.thread_id)].add(int(r.owner_id))
            tids = list(threads_of)
            small: list[int] = []
            for start in range(0, len(tids), 500):
                rows = await conn.execute(
                    sa.select(m.c.thread_id)
                    .where(m.c.thread_id.in_(tids[start : start + 500]), m.c.left_seq.is_(None))
                    .group_by(m.c.thread_id)
                    .having(sa.func.count() <= max_members)
                )
                small.extend(int(x) for x in rows.scalars())
            for start in range(0, len(small), 500):
                rows = await conn.execute(
                    sa.select(m.c.thread_id, m.c.owner_id).where(
                        m.c.thread_id.in_(small[start : start + 500]), m.c.left_seq.is_(None)
                    )
                )
                for r in rows:
                    peer = int(r.owner_id)
                    for subject in threads_of[int(r.thread_id)]:
                        if subject != peer:
                            out.setdefault(subject, set()).add(peer)
        return out


# -- transactions run whole by SqlStore._write ------------------------------------------


def _pairs(rows: Any, pairs: set[tuple[int, Any]], a: str, b: str) -> Iterator[Any]:
    """Rows of a query by `a IN (...) AND b IN (...)` whose (a, b) is one of pairs.

    Two IN lists are answered from the index on (a, b) by every engine, and the statement
    is built once; a row-value IN list is a scan of the whole table on SQLite (3.40).
    """
    for r in rows:
        if (getattr(r, a), getattr(r, b)) in pairs:
            yield r


def _in(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, expanding=True)


# Hot statements are built once: SQLAlchemy then reuses their compiled form.
_th, _mem, _msg = t.threads, t.thread_members, t.messages
_BUMP = (
    _th.update()
    .where(_th.c.id == sa.bindparam("tid"))
    .values(last_seq=_th.c.last_seq + sa.bindparam("n"), update_time=sa.bindparam("now"))
)
_BUMP_RETURNING = _BUMP.returning(_th.c.last_seq)
_SEQ_FOR_UPDATE = sa.select(_th.c.last_seq).where(_th.c.id == sa.bindparam("tid")).with_for_update()
_SENT = _message_select().where(
    _msg.c.sender_id.in_(_in("senders")), _msg.c.client_msg_id.in_(_in("keys"))
)
# For direct sends: which pairs are blocked either way, and which peers are deleted (b = 0).
_BARRED = sa.union_all(
    sa.select(t.blocks.c.blocker_id.label("a"), t.blocks.c.blocked_id.label("b")).where(
        t.blocks.c.blocker_id.in_(_in("blockers")), t.blocks.c.blocked_id.in_(_in("blocked"))
    ),
    sa.select(t.users.c.id.label("a"), sa.literal(0, sa.BigInteger).label("b")).where(
        t.users.c.id.in_(_in("peers")), t.users.c.delete_time.is_not(None)
    ),
)
_ACTIVE = sa.select(_mem.c.owner_id, _mem.c.thread_id).where(
    _mem.c.owner_id.in_(_in("owners")),
    _mem.c.thread_id.in_(_in("threads")),
    _mem.c.left_seq.is_(None),
)
# A member's delivered cursor, and the last seq they may see: the thread's last, or where
# they left if that is lower.
_DELIVERED = (
    sa.select(
        _mem.c.owner_id,
        _mem.c.thread_id,
        _mem.c.delivered_seq,
        sa.case((_mem.c.left_seq < _th.c.last_seq, _mem.c.left_seq), else_=_th.c.last_seq).label(
            "visible_seq"
        ),
    )
    .join(_th, _th.c.id == _mem.c.thread_id)
    .where(_mem.c.owner_id.in_(_in("owners")), _mem.c.thread_id.in_(_in("threads")))
)
_TOUCH = (
    _mem.update()
    .where(_mem.c.thread_id.in_(_in("threads")), _mem.c.left_seq.is_(None))
    .values(update_time=sa.bindparam("now"))
)


def _bump_seq(conn: Connection, thread_id: int, n: int, now: datetime) -> int:
    """Reserve n sequence numbers in a thread; return the last one."""
    args = {"tid": thread_id, "n": n, "now": now}
    if conn.dialect.update_returning:
        last = conn.execute(_BUMP_RETURNING, args).scalar_one_or_none()
        if last is None:
            raise NotFound(f"thread {thread_id} does not exist")
        return int(last)
    before = conn.execute(_SEQ_FOR_UPDATE, args).scalar_one_or_none()
    if before is None:
        raise NotFound(f"thread {thread_id} does not exist")
    conn.execute(_BUMP, args)
    return int(before) + n


def _create_group(
    conn: Connection,
    title: str,
    creator_id: int,
    member_ids: Sequence[int],
    created: NewMessage,
) -> tuple[int, Message]:
    th, m = t.threads, t.thread_members
    now = utcnow()
    res = conn.execute(
        th.insert().values(
            kind=ThreadKind.GROUP.value,
            title=title,
            last_seq=1,
            direct_key=None,
            create_time=now,
            update_time=now,
        )
    )
    thread_id = int(res.inserted_primary_key[0])  # type: ignore[index]
    rows = [
        dict(
            owner_id=uid,
            thread_id=thread_id,
            role=(Role.ADMIN if uid == creator_id else Role.MEMBER).value,
            nickname="",
            first_seq=1,
            left_seq=None,
            delivered_seq=0,
            read_seq=0,
            create_time=now,
            update_time=now,
        )
        for uid in dict.fromkeys([creator_id, *member_ids])
    ]
    conn.execute(m.insert(), rows)
    message = _insert_one(conn, thread_id, 1, created, now)
    return thread_id, message


def _change_group(
    conn: Connection,
    thread_id: int,
    changes: Sequence[MemberChange],
    title: str | None,
    event: NewMessage,
    max_members: int | None,
) -> Message:
    th, m = t.threads, t.thread_members
    now = utcnow()
    # Bumping the thread's seq first locks its row: changes to one group commit one at
    # a time across every message_svc process, and the check below sees the others.
    seq = _bump_seq(conn, thread_id, 1, now)
    if title is not None:
        conn.execute(th.update().where(th.c.id == thread_id).values(title=title))
    for ch in changes:
        where = (m.c.thread_id == thread_id, m.c.owner_id == ch.user_id)
        if ch.join:
            first = 1 if ch.full_history else seq
            res = conn.execute(
                m.update()
                .where(*where, m.c.left_seq.is_not(None))
                .values(left_seq=None, first_seq=first, role=Role.MEMBER.value, update_time=now)
            )
            if not res.rowcount and not _is_member(conn, thread_id, ch.user_id):
                conn.execute(
                    m.insert().values(
                        owner_id=ch.user_id,
                        thread_id=thread_id,
                        role=Role.MEMBER.value,
                        nickname="",
                        first_seq=first,
                        left_seq=None,
                        delivered_seq=0,
                        read_seq=0,
                        create_time=now,
                        update_time=now,
                    )
                )
        if ch.leave:
            conn.execute(m.update().where(*where).values(left_seq=seq, update_time=now))
        if ch.role is not None:
            conn.execute(m.update().where(*where).values(role=ch.role.value))
    _check_group(conn, thread_id, max_members)
    message = _insert_one(conn, thread_id, seq, event, now)
    conn.execute(
        m.update().where(m.c.thread_id == thread_id, m.c.left_seq.is_(None)).values(update_time=now)
    )
    return message


def _is_member(conn: Connection, thread_id: int, user_id: int) -> bool:
    m = t.thread_members
    row = conn.execute(
        sa.select(m.c.owner_id).where(m.c.thread_id == thread_id, m.c.owner_id == user_id)
    )
    return row.first() is not None


def _check_group(conn: Connection, thread_id: int, max_members: int | None) -> None:
    """What must hold after any change, whichever process made it; raising rolls back."""
    m = t.thread_members
    admin = sa.case((m.c.role == Role.ADMIN.value, 1), else_=0)
    members, admins = (
        conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(admin), 0)).where(
                m.c.thread_id == thread_id, m.c.left_seq.is_(None)
            )
        )
    ).one()
    if max_members is not None and members > max_members:
        raise ResourceExhausted(f"a group has at most {max_members} members", "GROUP_FULL")
    if members and not admins:
        raise FailedPrecondition(
            "a group needs an admin: promote someone before the last admin steps down",
            "LAST_ADMIN",
        )


def _insert_one(
    conn: Connection, thread_id: int, seq: int, new: NewMessage, now: datetime
) -> Message:
    msg_id = new_msg_id()
    conn.execute(
        t.messages.insert().values(
            thread_id=thread_id,
            seq=seq,
            msg_id=msg_id,
            sender_id=new.sender.user_id,
            sender_device_id=new.sender_device_id,
            client_msg_id=new.client_msg_id,
            kind=new.kind.value,
            text=new.text,
            system=_system_to_json(new.system),
            create_time=now,
        )
    )
    return Message(
        thread_id,
        seq,
        msg_id,
        new.sender,
        new.sender_device_id,
        new.client_msg_id,
        new.kind,
        new.text,
        now,
        new.system,
    )


def _append(
    conn: Connection, batch: Sequence[NewMessage], dedupe: bool
) -> list[Appended | Refused]:
    """Store a batch; keys already stored answer with the original.

    Without `dedupe` the lookup of stored keys is skipped: the unique key on (sender,
    client_msg_id) then fails the whole transaction when one is a retry, and the caller runs
    it again with the lookup. Retries are rare; the lookup would run on every commit.
    """
    now = utcnow()
    keys = list(dict.fromkeys((n.sender.user_id, n.client_msg_id) for n in batch))
    out: list[Appended | Refused | None] = [None] * len(batch)
    existing: dict[tuple[int, str], Message] = {}
    for start in range(0, len(keys) if dedupe else 0, 300):
        chunk = keys[start : start + 300]
        rows = conn.execute(
            _SENT, {"senders": list({k[0] for k in chunk}), "keys": list({k[1] for k in chunk})}
        )
        for r in _pairs(rows, set(chunk), "sender_id", "client_msg_id"):
            m_ = _message(r)
            existing[(m_.sender.user_id, m_.client_msg_id)] = m_
    # Membership is checked in the same transaction that writes: a sender removed a
    # moment ago cannot slip a message in.
    pairs = list(
        {
            (n.sender.user_id, n.thread_id)
            for n in batch
            if (n.sender.user_id, n.client_msg_id) not in existing
        }
    )
    allowed: set[tuple[int, int]] = set()
    for start in range(0, len(pairs), 300):
        part = pairs[start : start + 300]
        rows = conn.execute(
            _ACTIVE, {"owners": list({p[0] for p in part}), "threads": list({p[1] for p in part})}
        )
        allowed.update(
            (int(r.owner_id), int(r.thread_id))
            for r in _pairs(rows, set(part), "owner_id", "thread_id")
        )
    barred = _barred(conn, batch, existing, allowed)
    fresh: dict[tuple[int, str], int] = {}
    per_thread: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(batch):
        key = (n.sender.user_id, n.client_msg_id)
        if key in existing:
            out[i] = Appended(existing[key], True)
        elif (n.sender.user_id, n.thread_id) not in allowed:
            out[i] = Refused(n.thread_id)
        elif n.peer_id and (n.sender.user_id, n.peer_id) in barred:
            out[i] = Refused(n.thread_id, barred[(n.sender.user_id, n.peer_id)])
        elif key in fresh:
            continue
        else:
            fresh[key] = i
            per_thread[n.thread_id].append(i)
    rows_to_insert: list[dict[str, Any]] = []
    # Threads are locked in id order so concurrent batches cannot deadlock.
    for thread_id, idxs in sorted(per_thread.items()):
        last = _bump_seq(conn, thread_id, len(idxs), now)
        for offset, i in enumerate(idxs):
            n = batch[i]
            seq = last - len(idxs) + 1 + offset
            msg_id = new_msg_id()
            rows_to_insert.append(
                dict(
                    thread_id=thread_id,
                    seq=seq,
                    msg_id=msg_id,
                    sender_id=n.sender.user_id,
                    sender_device_id=n.sender_device_id,
                    client_msg_id=n.client_msg_id,
                    kind=n.kind.value,
                    text=n.text,
                    system=_system_to_json(n.system),
                    create_time=now,
                )
            )
            out[i] = Appended(
                Message(
                    thread_id,
                    seq,
                    msg_id,
                    n.sender,
                    n.sender_device_id,
                    n.client_msg_id,
                    n.kind,
                    n.text,
                    now,
                    n.system,
                ),
                False,
            )
    if rows_to_insert:
        conn.execute(_msg.insert(), rows_to_insert)
        conn.execute(_TOUCH, {"threads": list(per_thread), "now": now})
    for i, n in enumerate(batch):
        if out[i] is None:  # repeated inside this batch: same answer as the first
            first = out[fresh[(n.sender.user_id, n.client_msg_id)]]
            assert isinstance(first, Appended)
            out[i] = Appended(first.message, True)
    return [a for a in out if a is not None]


def _barred(
    conn: Connection,
    batch: Sequence[NewMessage],
    existing: dict[tuple[int, str], Message],
    allowed: set[tuple[int, int]],
) -> dict[tuple[int, int], str]:
    """Direct sends that may not be stored, by (sender, peer): a block either way, a deleted peer.

    Read in the commit's transaction, like membership: a block made a moment ago holds.
    """
    direct = {
        (n.sender.user_id, n.peer_id)
        for n in batch
        if n.peer_id
        and n.peer_id != n.sender.user_id
        and (n.sender.user_id, n.client_msg_id) not in existing
        and (n.sender.user_id, n.thread_id) in allowed
    }
    if not direct:
        return {}
    people = list({x for pair in direct for x in pair})
    links: set[tuple[int, int]] = set()
    gone: set[int] = set()
    rows = conn.execute(
        _BARRED, {"blockers": people, "blocked": people, "peers": list({p for _, p in direct})}
    )
    for r in rows:
        if int(r.b) == 0:
            gone.add(int(r.a))
        else:
            links.add((int(r.a), int(r.b)))
    out: dict[tuple[int, int], str] = {}
    for sender, peer in direct:
        if peer in gone:
            out[(sender, peer)] = "peer_deleted"
        elif (peer, sender) in links:
            out[(sender, peer)] = "blocked_by_peer"
        elif (sender, peer) in links:
            out[(sender, peer)] = "blocking_peer"
    return out


def _advance_delivered(conn: Connection, acks: Sequence[DeviceAck]) -> list[Advance]:
    """One transaction for a whole flush: a few set-based statements, not one per cursor.

    Each cursor is first clamped to the last seq its member may see, read in this
    transaction: a device may ack what it loaded through history, or more than exists, and
    its cursor must still never pass what the member can be shown. That bound only grows
    (messages are appended; a member who leaves stops at the seq of their leaving, which is
    past what they saw before), so a bound read a moment early is never too high. A cursor
    for a thread the user never was in is dropped. The updates only ever move a cursor
    forward, so two flushes racing for one device cannot move it back.
    """
    c, m = t.device_cursors, t.thread_members
    asked: dict[tuple[int, int], int] = {}
    owner: dict[int, int] = {}
    for ack in acks:
        owner[ack.device_id] = ack.user_id
        for cur in ack.cursors:
            key = (ack.device_id, cur.thread_id)
            asked[key] = max(asked.get(key, 0), cur.seq)
    if not asked:
        return []
    pairs = list({(owner[dv], th) for dv, th in asked})
    current: dict[tuple[int, int], int] = {}
    visible: dict[tuple[int, int], int] = {}
    for start in range(0, len(pairs), 300):
        chunk = pairs[start : start + 300]
        rows = conn.execute(
            _DELIVERED,
            {"owners": list({p[0] for p in chunk}), "threads": list({p[1] for p in chunk})},
        )
        for r in _pairs(rows, set(chunk), "owner_id", "thread_id"):
            key = (int(r.owner_id), int(r.thread_id))
            current[key] = int(r.delivered_seq)
            visible[key] = int(r.visible_seq)
    want = {
        (dv, th): min(seq, visible[(owner[dv], th)])
        for (dv, th), seq in asked.items()
        if (owner[dv], th) in visible
    }
    if not want:
        return []
    have: dict[tuple[int, int], int] = {}
    for r in conn.execute(
        sa.select(c.c.device_id, c.c.thread_id, c.c.delivered_seq).where(
            c.c.device_id.in_(list(owner))
        )
    ):
        have[(int(r.device_id), int(r.thread_id))] = int(r.delivered_seq)
    inserts = [
        dict(device_id=dv, thread_id=th, delivered_seq=seq)
        for (dv, th), seq in want.items()
        if (dv, th) not in have
    ]
    updates = [
        dict(dv=dv, th=th, seq=seq)
        for (dv, th), seq in want.items()
        if (dv, th) in have and seq > have[(dv, th)]
    ]
    if inserts:
        conn.execute(c.insert(), inserts)
    if updates:
        conn.execute(
            c.update()
            .where(
                c.c.device_id == sa.bindparam("dv"),
                c.c.thread_id == sa.bindparam("th"),
                c.c.delivered_seq < sa.bindparam("seq"),
            )
            .values(delivered_seq=sa.bindparam("seq")),
            updates,
        )
    best: dict[tuple[int, int], int] = {}
    for (dv, th), seq in want.items():
        if (dv, th) not in have or seq > have[(dv, th)]:
            key = (owner[dv], th)
            best[key] = max(best.get(key, 0), seq)
    moved = [(u, th, seq) for (u, th), seq in best.items() if seq > current[(u, th)]]
    if moved:
        conn.execute(
            m.update()
            .where(
                m.c.owner_id == sa.bindparam("u"),
                m.c.thread_id == sa.bindparam("th"),
                m.c.delivered_seq < sa.bindparam("seq"),
            )
            .values(delivered_seq=sa.bindparam("seq")),
            [dict(u=u, th=th, seq=seq) for u, th, seq in moved],
        )
    return [Advance(th, u, seq) for u, th, seq in moved]


def _create_user(
    conn: Connection,
    username: str,
    display_name: str,
    phone: str | None,
    password_hash: str,
    first_becomes_admin: bool,
    is_admin: bool,
    is_system: bool,
    invite_hash: str,
) -> UserRow:
    now = utcnow()
    inv, cfg = t.invites, t.server_config
    if invite_hash:
        used = conn.execute(
            inv.update()
            .where(
                inv.c.code_hash == invite_hash,
                inv.c.use_time.is_(None),
                inv.c.revoke_time.is_(None),
                inv.c.expire_time > now,
            )
            .values(use_time=now)
        )
        if not used.rowcount:
            raise PermissionDenied(
                "this invite code is not valid: it was used, revoked or has expired",
                "BAD_INVITE",
            )
    first = False
    if first_becomes_admin and not is_system:
        marker = conn.execute(sa.select(cfg.c.value).where(cfg.c.key == t.FIRST_ADMIN)).first()
        first = marker is None
    admin = is_admin or first
    res = conn.execute(
        t.users.insert().values(
            username=username,
            display_name=display_name,
            phone=phone,
            password_hash=password_hash,
            hide_last_seen=False,
            create_time=now,
            is_admin=admin,
            is_system=is_system,
        )
    )
    user_id = int(res.inserted_primary_key[0])  # type: ignore[index]
    if invite_hash:
        conn.execute(inv.update().where(inv.c.code_hash == invite_hash).values(used_by_id=user_id))
    if first:
        # The key is unique: of two first registrations at once, one commits this.
        conn.execute(cfg.insert().values(key=t.FIRST_ADMIN, value=str(user_id)))
    return UserRow(
        user_id,
        username,
        display_name,
        phone,
        password_hash,
        False,
        None,
        is_admin=admin,
        is_system=is_system,
        create_time=now,
    )


def _add_device(conn: Connection, new: NewDevice) -> AddedDevice:
    now = utcnow()
    d, u = t.devices, t.users
    # Locks the user's row where the engine can: two logins of one user count in turn.
    conn.execute(sa.select(u.c.id).where(u.c.id == new.user_id).with_for_update())
    active = conn.execute(
        sa.select(d.c.id, d.c.create_time, d.c.last_active_time).where(
            d.c.user_id == new.user_id,
            d.c.revoke_time.is_(None),
            sa.or_(d.c.expire_time.is_(None), d.c.expire_time > now),
        )
    ).all()
    replaced: list[int] = []
    if len(active) >= new.max_devices:
        if not new.replace_oldest:
            raise ResourceExhausted(
                f"this account is logged in on {len(active)} devices, the most allowed: log "
                "one of them out first, or log in replacing the least recently used one",
                "TOO_MANY_DEVICES",
            )

        def used(r: Any) -> tuple[datetime, int]:
            return (_aware(r.last_active_time or r.create_time), int(r.id))

        ordered = sorted(active, key=used)
        replaced = [int(r.id) for r in ordered[: len(active) - new.max_devices + 1]]
        conn.execute(d.update().where(d.c.id.in_(replaced)).values(revoke_time=now))
    res = conn.execute(
        d.insert().values(
            user_id=new.user_id,
            name=new.name,
            token_hash=new.token_hash,
            create_time=now,
            last_active_time=now,
            platform=new.platform,
            expire_time=new.expire_time,
        )
    )
    device_id = int(res.inserted_primary_key[0])  # type: ignore[index]
    row = DeviceRow(device_id, new.user_id, new.name, now, now, new.platform, new.expire_time)
    return AddedDevice(row, tuple(replaced))


def _erase_user(conn: Connection, user_id: int) -> list[int]:
    now = utcnow()
    d, u, c, b = t.devices, t.users, t.contacts, t.blocks
    revoked = [
        int(x)
        for x in conn.execute(
            sa.select(d.c.id).where(d.c.user_id == user_id, d.c.revoke_time.is_(None))
        ).scalars()
    ]
    if revoked:
        conn.execute(d.update().where(d.c.id.in_(revoked)).values(revoke_time=now))
    mine = sa.select(d.c.id).where(d.c.user_id == user_id).scalar_subquery()
    conn.execute(t.device_cursors.delete().where(t.device_cursors.c.device_id.in_(mine)))
    conn.execute(c.delete().where(sa.or_(c.c.owner_id == user_id, c.c.contact_id == user_id)))
    conn.execute(b.delete().where(sa.or_(b.c.blocker_id == user_id, b.c.blocked_id == user_id)))
    conn.execute(
        u.update()
        .where(u.c.id == user_id)
        .values(
            username=f"~deleted-{user_id}",
            display_name=DELETED_NAME,
            phone=None,
            password_hash="!",
            hide_last_seen=True,
            last_seen_time=None,
            is_admin=False,
            delete_time=now,
        )
    )
    return sorted(revoked)


def _report_row(r: Any) -> ReportRow:
    return ReportRow(
        report_id=r.id,
        reporter=User(r.reporter_id, r.a_username, r.a_display_name),
        subject=User(r.subject_id, r.b_username, r.b_display_name),
        thread_id=r.thread_id or 0,
        reason=r.reason,
        text=r.text,
        create_time=_aware(r.create_time),
        resolve_time=_utc(r.resolve_time),
        resolver_id=r.resolver_id,
        resolution=r.resolution,
    )


def _fields(row: ReportRow) -> dict[str, Any]:
    return {f: getattr(row, f) for f in row.__dataclass_fields__}
