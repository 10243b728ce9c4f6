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
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc, pool
from sqlalchemy.engine import Connection, Dialect, Engine
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
    Refusal,
    Refused,
    ReportRow,
    ThreadRow,
    ThreadSummary,
    UserRow,
)
from natter.domain import (
    Attachment,
    AttachmentRecord,
    Cursor,
    DeviceAck,
    Message,
    MessageKind,
    MessageState,
    NotificationPreview,
    PresenceUser,
    PushContext,
    PushJob,
    PushKind,
    PushRecipient,
    PushTarget,
    Reaction,
    ReplyTo,
    Role,
    SystemEvent,
    SystemKind,
    ThreadKind,
    User,
    UserChange,
    UserChangeKind,
)
from natter.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from natter.ids import new_msg_id, new_msg_ids
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
# A database server is probed this often with a fresh connection; one that does not answer
# within PROBE_TIMEOUT is unreachable until a probe succeeds, and calls fail at once.
PROBE_INTERVAL = 1.0
# While the database is unreachable it is probed this often, so calls resume soon after.
PROBE_RETRY = 0.2
PROBE_TIMEOUT = 3.0
# A transaction left open by a process cut off from the server is rolled back by the server
# after this long, so its row locks do not hold up the other replicas (milliseconds).
IDLE_IN_TRANSACTION_MS = 5_000
# A pooled connection idle this long is pinged before it is handed out (see _ping_when_idle).
PING_IDLE_SECONDS = 1.0


def _quiet(task: asyncio.Future[Any]) -> None:
    """A closing connection's outcome is nobody's: read it so that it is not logged."""
    if not task.cancelled():
        task.exception()


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
    except exc.TimeoutError as e:
        # Every pooled connection stayed busy for the pool's timeout (a connect storm):
        # the caller may try later, like an outage, and it is no bug of the server's.
        logger.warning("database busy: %s", e)
        raise Unavailable("database busy: no connection came free in time; try again") from e


class PingCount:
    """How many pooled connections were pinged before use, and how many of those were dead."""

    def __init__(self) -> None:
        self.pings = 0
        self.dead = 0


def _ping_when_idle(engine: AsyncEngine, idle: float, count: PingCount) -> None:
    """Ping a pooled connection at checkout only when it sat idle `idle` seconds or more.

    SQLAlchemy's `pool_pre_ping` pings at every checkout, and on asyncpg a ping is three
    round trips (BEGIN, an empty statement, ROLLBACK): more than half of a one-row read's
    and a third of a send's statements, on every transaction. A connection in steady use
    is handed out as it is. One that broke while in use (the server restarted within the
    last `idle` seconds) fails its transaction with UNAVAILABLE, which the caller retries
    (a send carries its client_msg_id), and the pool drops it; one that sat idle, the
    case pre-ping is for, is still pinged and replaced at once when dead.
    """
    sync = engine.sync_engine

    @event.listens_for(sync, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(sync, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle:
            return  # fresh from connect, or in steady use
        count.pings += 1
        try:
            sync.dialect.do_ping(dbapi_connection)
        except Exception as e:
            count.dead += 1
            # The pool discards this connection and checks out another (a fresh one if need be).
            raise exc.DisconnectionError(f"pooled connection is dead: {type(e).__name__}") from e


def _server_limits(url: sa.URL) -> dict[str, Any]:
    """Per-connection settings that bound what a vanished client leaves behind on the server."""
    backend = url.get_backend_name()
    if backend == "postgresql" and url.get_driver_name() == "asyncpg":
        ms = str(IDLE_IN_TRANSACTION_MS)
        return {"server_settings": {"idle_in_transaction_session_timeout": ms}}
    # MariaDB/MySQL: a waiter gives up after innodb_lock_wait_timeout (50 s) instead.
    return {}


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
        notification_preview=_preview(get("notification_preview")),
        about=get("about") or "",
        picture_id=get("picture_id") or None,
    )


def _preview(value: Any) -> NotificationPreview:
    try:
        return NotificationPreview(int(value))
    except (TypeError, ValueError):
        return NotificationPreview.FULL


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
        muted_until=_utc(r.muted_until),
    )


# The newest messages of a burst a push worker reads: enough for the count and the preview.
PUSH_MESSAGES = 200


def _push_target(r: Any) -> PushTarget:
    try:
        kind = PushKind(r.kind)
    except ValueError:
        kind = PushKind.UNKNOWN
    return PushTarget(
        device_id=int(r.device_id),
        user_id=int(r.user_id),
        kind=kind,
        endpoint=r.endpoint,
        p256dh=r.p256dh,
        auth=r.auth,
        app_id=r.app_id,
        pushkey=r.pushkey,
        create_time=_aware(r.create_time),
    )


def _mergeable(r: Any) -> bool:
    """A first try for every recipient that no worker has started: bursts fold into it."""
    return bool(r.device_id == 0 and r.attempts == 0 and r.done_user == 0)


def _push_job(r: Any, owner: str) -> PushJob:
    return PushJob(
        job_id=int(r.id),
        thread_id=int(r.thread_id),
        first_seq=int(r.first_seq),
        last_seq=int(r.last_seq),
        create_time=_aware(r.create_time),
        device_id=int(r.device_id),
        attempts=int(r.attempts),
        done_user=int(r.done_user),
        lease_owner=owner,
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
    t.messages.c.target_seq,
    t.messages.c.payload,
    t.messages.c.edit_seq,
    t.messages.c.edit_time,
    t.messages.c.delete_seq,
    t.users.c.username,
    t.users.c.display_name,
)
# Kinds by number, for statements: content is what counts as unread and previews a thread.
_CONTENT = [k.value for k in MessageKind if k.is_content]
_EVENTS = [k.value for k in MessageKind if k.is_event]
_SEARCHED = [MessageKind.TEXT.value, MessageKind.ATTACHMENT.value]


def _attachment_json(a: Attachment) -> list[Any]:
    return [
        a.attachment_id,
        a.mime_type,
        a.size,
        a.name,
        a.sha256,
        a.width,
        a.height,
        a.duration_ms,
        a.blurhash,
        a.has_thumbnail,
        a.voice_note,
    ]


def _payload_json(
    attachments: Sequence[Attachment], reply: ReplyTo | None, forwarded: bool
) -> str | None:
    data: dict[str, Any] = {}
    if attachments:
        data["a"] = [_attachment_json(a) for a in attachments]
    if reply is not None:
        data["r"] = [reply.seq, _user_json(reply.sender), reply.snippet, reply.kind.value]
    if forwarded:
        data["f"] = 1
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) if data else None


def _payload_of(raw: str | None) -> tuple[tuple[Attachment, ...], ReplyTo | None, bool]:
    if not raw:
        return (), None, False
    data = json.loads(raw)
    atts = tuple(
        Attachment(
            attachment_id=a[0],
            mime_type=a[1],
            size=a[2],
            name=a[3],
            sha256=a[4],
            width=a[5],
            height=a[6],
            duration_ms=a[7],
            blurhash=a[8],
            has_thumbnail=bool(a[9]),
            voice_note=bool(a[10]),
        )
        for a in data.get("a", ())
    )
    r = data.get("r")
    reply = ReplyTo(r[0], User(*r[1]), r[2], MessageKind(r[3])) if r else None
    return atts, reply, bool(data.get("f"))


def _message_select() -> sa.Select[Any]:
    return sa.select(*_MESSAGE_COLUMNS).join(t.users, t.users.c.id == t.messages.c.sender_id)


_KINDS = {k.value: k for k in MessageKind}


def _message(r: Any, senders: dict[tuple[int, str, str], User] | None = None) -> Message:
    """A row of `_message_select()`; `senders` shares one User per sender among rows.

    Unpacked in `_MESSAGE_COLUMNS` order: a replay page is tens of thousands of rows, and
    17 lookups by name cost more than the rest of the row.
    """
    (
        thread_id,
        seq,
        msg_id,
        sender_id,
        sender_device_id,
        client_msg_id,
        kind_number,
        text,
        system,
        create_time,
        target_seq,
        payload,
        edit_seq,
        edit_time,
        delete_seq,
        username,
        display_name,
    ) = r
    kind = _KINDS.get(kind_number) or MessageKind(kind_number)
    emoji = ""
    if kind is MessageKind.REACTION:
        text, emoji = "", text
    atts, reply, forwarded = _payload_of(payload) if payload else ((), None, False)
    key = (sender_id, username, display_name)
    if senders is None:
        sender = User(*key)
    else:
        sender = senders.get(key) or senders.setdefault(key, User(*key))
    return Message(
        thread_id,
        seq,
        msg_id,
        sender,
        sender_device_id,
        client_msg_id,
        kind,
        text,
        _aware(create_time),
        _system_from_json(system) if system else None,
        MessageState.UNKNOWN,
        atts,
        reply,
        forwarded,
        target_seq or 0,
        emoji,
        None if edit_time is None else _utc(edit_time),
        edit_seq or 0,
        delete_seq is not None,
        delete_seq or 0,
    )


# A replay page on SQLite, read through the driver: `_message_select()` as SQL, in
# `_MESSAGE_COLUMNS` order. SQLAlchemy's row processing cost some 20 microseconds a row
# against 3 for SQLite itself, and a device 10,000 messages behind is 10,000 rows.
_SQLITE_PAGE = (
    "SELECT m.thread_id, m.seq, m.msg_id, m.sender_id, m.sender_device_id, m.client_msg_id, "
    "m.kind, m.text, m.system, m.create_time, m.target_seq, m.payload, m.edit_seq, "
    "m.edit_time, m.delete_seq, u.username, u.display_name "
    "FROM messages m JOIN users u ON u.id = m.sender_id "
    "WHERE m.thread_id = ? AND m.seq > ? AND m.seq <= ? ORDER BY m.seq LIMIT ?"
)


def _sqlite_time(value: str | None) -> datetime | None:
    """A datetime as SQLAlchemy stores it on SQLite (ISO text, UTC), as `UtcDateTime` reads it."""
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


async def _sqlite_page(
    conn: AsyncConnection, thread_id: int, after: int, upto: int, limit: int
) -> list[tuple[Any, ...]]:
    """Rows of a thread's log after `after` up to `upto`, on the connection's transaction."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    rows = await driver.execute_fetchall(_SQLITE_PAGE, (thread_id, after, upto, limit))
    return [
        (*r[:9], _sqlite_time(r[9]), r[10], r[11], r[12], _sqlite_time(r[13]), *r[14:])
        for r in rows
    ]


def _attachment_record(r: Any) -> AttachmentRecord:
    return AttachmentRecord(
        Attachment(
            attachment_id=r.id,
            mime_type=r.mime_type,
            size=int(r.size),
            name=r.name,
            sha256=r.sha256,
            width=int(r.width),
            height=int(r.height),
            duration_ms=int(r.duration_ms),
            blurhash=r.blurhash,
            has_thumbnail=bool(r.has_thumb),
            voice_note=bool(r.voice_note),
        ),
        int(r.owner_id),
        _aware(r.create_time),
    )


def _user_change(r: Any) -> UserChange:
    return UserChange(
        int(r.seq),
        UserChangeKind(r.kind),
        Cursor(int(r.thread_id), int(r.target_seq)),
        _aware(r.create_time),
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

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        pool_timeout: float = 30.0,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.metrics = metrics
        self.url = sa.make_url(url)
        self.sqlite = self.url.get_backend_name() == "sqlite"
        self.engine: AsyncEngine | None = None
        self._pool_size = pool_size
        self._pool_timeout = pool_timeout
        # SQLite has one writer; serialising writes here avoids busy retries.
        self._write_lock = asyncio.Lock()
        # SQLite's hot writes run whole on one thread of their own (see _write).
        self._sync_engine: Engine | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._unreachable_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        self.ping_idle_seconds = PING_IDLE_SECONDS
        self.pinged = PingCount()
        # SQLite search: how it picks its plan (see _search_per_thread).
        self.per_thread_matches = PER_THREAD_MATCHES

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
                kwargs.update(pool_timeout=self._pool_timeout)
        else:
            kwargs.update(
                pool_size=self._pool_size,
                max_overflow=10,
                pool_timeout=self._pool_timeout,
                # Last in, first out: under light load a few connections stay in use (and
                # need no ping) while the rest idle, instead of every one going idle in turn.
                pool_use_lifo=True,
                connect_args=_server_limits(self.url),
            )
        # Statements' parameters (message text, token hashes) never appear in errors or logs.
        self.engine = create_async_engine(self.url, hide_parameters=True, **kwargs)
        if not self.sqlite:
            _ping_when_idle(self.engine, self.ping_idle_seconds, self.pinged)
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
        if not self.sqlite:
            self._probe = asyncio.create_task(self._probe_forever())
        self.metrics.gauges(self._pool_gauges)

    @property
    def reachable(self) -> bool:
        """False while the database server does not answer this process's probes."""
        return self._unreachable_since is None

    async def _probe_forever(self) -> None:
        """`SELECT 1` every PROBE_INTERVAL on a connection of its own, bounded by PROBE_TIMEOUT.

        Its own: pooled connections may all be stuck in calls that the server never answers
        (a network partition), and a probe must not wait behind them. Kept open between
        probes, so a slow link costs one round trip per probe, not a whole login. A probe
        not answered in time marks the database unreachable at once and is left to end in
        the background (a cancelled call may itself wait on the silent server); the next
        probe connects afresh.

        A kept connection that fails proves only that it broke, perhaps in a restart that is
        already over: the probe asks again on a fresh connection before it calls the
        database unreachable. Connections are never pooled (a pooled one may be as stale).
        """
        probe = create_async_engine(
            self.url, poolclass=pool.NullPool, connect_args=_server_limits(self.url)
        )
        conn: AsyncConnection | None = None
        abandoned: set[asyncio.Task[object]] = set()  # probes given up on
        closing: set[asyncio.Task[object]] = set()  # connections being closed
        task: asyncio.Task[AsyncConnection] | None = None

        def drop(c: AsyncConnection) -> None:
            """Close a connection that failed, in the background (it may hang on a partition)."""
            closer: asyncio.Task[object] = asyncio.create_task(c.close())
            closing.add(closer)
            closer.add_done_callback(closing.discard)
            closer.add_done_callback(_quiet)

        def reap(t: asyncio.Task[AsyncConnection]) -> None:
            """A probe given up on that answered after all: close what it opened."""
            if not t.cancelled() and t.exception() is None and t.result() is not conn:
                drop(t.result())

        async def select_one(c: AsyncConnection) -> AsyncConnection:
            await c.execute(sa.text("SELECT 1"))
            await c.rollback()
            return c

        async def once(c: AsyncConnection | None) -> AsyncConnection:
            if c is not None:
                try:
                    return await select_one(c)
                except asyncio.CancelledError:  # no answer in time
                    drop(c)
                    raise
                except Exception:
                    drop(c)
            fresh = await probe.connect()
            try:
                return await select_one(fresh)
            except BaseException:
                drop(fresh)
                raise

        async def settle(tasks: set[asyncio.Task[object]]) -> None:
            if tasks:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(PROBE_TIMEOUT):
                        await asyncio.gather(*tasks, return_exceptions=True)

        try:
            while True:
                task = asyncio.create_task(once(conn))
                done, _ = await asyncio.wait({task}, timeout=PROBE_TIMEOUT * (1 if conn else 2))
                error: BaseException | None = None
                if not done:
                    error = TimeoutError(f"no answer within {PROBE_TIMEOUT:g} s")
                    task.cancel()
                    abandoned.add(task)
                    task.add_done_callback(abandoned.discard)
                    task.add_done_callback(reap)
                    conn = None
                elif (failed := task.exception()) is not None:
                    error, conn = failed, None
                else:
                    conn = task.result()
                if error is not None:
                    if self._unreachable_since is None:
                        self._unreachable_since = time.monotonic()
                        logger.warning(
                            "database unreachable (%r); calls fail until it answers", error
                        )
                elif self._unreachable_since is not None:
                    logger.info(
                        "database answers again after %.1f s",
                        time.monotonic() - self._unreachable_since,
                    )
                    self._unreachable_since = None
                await asyncio.sleep(PROBE_INTERVAL if self.reachable else PROBE_RETRY)
        finally:
            # No connection of the probe's may outlive the store: a probe still in flight is
            # ended (its connection is then closed, below), and every close is waited for.
            if task is not None and not task.done():
                task.cancel()
                abandoned.add(task)
                task.add_done_callback(reap)
            elif task is not None:
                reap(task)  # it may have answered just as the store closed
            for t in abandoned:
                t.cancel()
            await settle(set(abandoned))
            if conn is not None:
                drop(conn)
            await settle(set(closing))
            with contextlib.suppress(Exception):
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await probe.dispose()

    def _check_reachable(self) -> None:
        since = self._unreachable_since
        if since is not None:
            raise Unavailable(
                f"the database has not answered for {time.monotonic() - since:.0f} s",
                "DATABASE_UNREACHABLE",
            )

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
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
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
        self._check_reachable()
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
        self._check_reachable()
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
        self,
        user_id: int,
        display_name: str | None,
        hide_last_seen: bool | None,
        notification_preview: NotificationPreview | None = None,
    ) -> None:
        values: dict[str, Any] = {}
        if display_name is not None:
            values["display_name"] = display_name
        if hide_last_seen is not None:
            values["hide_last_seen"] = hide_last_seen
        if notification_preview is not None:
            values["notification_preview"] = notification_preview.value
        if not values:
            return
        async with self._tx() as conn:
            await conn.execute(t.users.update().where(t.users.c.id == user_id).values(**values))

    async def set_profile(self, user_id: int, about: str | None, picture_id: str | None) -> None:
        values: dict[str, Any] = {}
        if about is not None:
            values["about"] = about
        if picture_id is not None:
            values["picture_id"] = picture_id or None
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
            # A logged-out device is reached no more: its push target goes with its token.
            await conn.execute(
                t.push_targets.delete().where(t.push_targets.c.device_id == device_id)
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
                # Logged-out devices are reached no more: their push targets go with the tokens.
                pt = t.push_targets
                await conn.execute(pt.delete().where(pt.c.device_id.in_(ids)))
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
        # The preview is the newest content this member may see: reactions, edits and
        # deletes after it are events, not messages of their own. Read backwards from the
        # member's last visible seq on the primary key, it stops at the first content row.
        hi_expr = sa.case(
            (sa.and_(m.c.left_seq.is_not(None), m.c.left_seq < th.c.last_seq), m.c.left_seq),
            else_=th.c.last_seq,
        )
        inner = msg.alias("preview")
        last_content = (
            sa.select(inner.c.seq)
            .where(
                inner.c.thread_id == m.c.thread_id,
                inner.c.seq <= hi_expr,
                inner.c.seq >= m.c.first_seq,
                inner.c.kind.in_(_CONTENT),
            )
            .order_by(inner.c.seq.desc())
            .limit(1)
            .correlate(m, th)
            .scalar_subquery()
        )
        q = (
            sa.select(
                m,
                th.c.kind,
                th.c.title,
                th.c.last_seq,
                th.c.update_time.label("t_update"),
                th.c.id,
                last_content.label("last_content"),
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
            previews: dict[int, int] = {}
            for r in rows:
                member = _member_row(r)
                thread = ThreadRow(
                    r.thread_id, ThreadKind(r.kind), r.title, r.last_seq, _aware(r.t_update)
                )
                hi = member.last_visible(thread.last_seq)
                lo = max(member.read_seq, member.first_seq - 1)
                pages.append((member, thread, lo, hi))
                if r.last_content is not None:
                    previews[thread.thread_id] = int(r.last_content)
            ids = [th_.thread_id for _, th_, _, _ in pages]
            wanted = set(previews.items())
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
                folded = await _fold(conn, list(lasts.values()), user_id)
                lasts = {x.thread_id: x for x in folded}
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
                        msg.c.kind.in_(_CONTENT),
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

    async def set_mute(self, user_id: int, thread_id: int, until: datetime | None) -> bool:
        m = t.thread_members
        async with self._tx() as conn:
            res = await conn.execute(
                m.update()
                .where(m.c.owner_id == user_id, m.c.thread_id == thread_id)
                .values(muted_until=until)
            )
            return bool(res.rowcount)

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

    # -- moving to a message log (natter move-to-log) --------------------------------------

    async def thread_last_seqs(self) -> dict[int, int]:
        """Every thread's last seq."""
        th = t.threads
        async with self._read() as conn:
            rows = await conn.execute(sa.select(th.c.id, th.c.last_seq))
            return {int(tid): int(last) for tid, last in rows}

    async def stored_entries(
        self, thread_id: int, after_seq: int, limit: int
    ) -> list[tuple[Message, str | None]]:
        """A thread's rows after a seq, oldest first, as stored: each message and its payload."""
        msg = t.messages
        q = (
            _message_select()
            .add_columns(msg.c.payload.label("raw_payload"))
            .where(msg.c.thread_id == thread_id, msg.c.seq > after_seq)
            .order_by(msg.c.seq)
            .limit(limit)
        )
        async with self._read() as conn:
            return [(_message(r[:-1]), r[-1]) for r in await conn.execute(q)]

    async def strip_bodies(self, thread_id: int) -> int:
        """Empty a thread's texts, system events and payloads: the log holds them now."""
        msg = t.messages
        has_body = sa.or_(msg.c.text != "", msg.c.system.is_not(None), msg.c.payload.is_not(None))
        stmt = (
            msg.update()
            .where(msg.c.thread_id == thread_id, has_body)
            .values(text="", system=None, payload=None)
        )
        return await self._write(lambda conn: int(conn.execute(stmt).rowcount or 0))

    async def list_messages(
        self,
        thread_id: int,
        after_seq: int,
        before_seq: int,
        limit: int,
        newest: bool,
        *,
        viewer: int = 0,
        folded: bool = False,
    ) -> list[Message]:
        msg = t.messages
        q = _message_select().where(msg.c.thread_id == thread_id, msg.c.seq > after_seq)
        if before_seq > 0:
            q = q.where(msg.c.seq < before_seq)
        if folded:
            q = q.where(msg.c.kind.notin_(_EVENTS))
        q = q.order_by(msg.c.seq.desc() if newest else msg.c.seq).limit(limit)
        async with self._read() as conn:
            rows = [_message(r) for r in await conn.execute(q)]
            rows = await _fold(conn, rows, viewer)
        if newest:
            rows.reverse()
        return rows

    async def messages_after(
        self, ranges: Sequence[tuple[int, int, int]], limit: int, *, viewer: int = 0
    ) -> list[Message]:
        msg, th = t.messages, t.threads
        out: list[Message] = []
        senders: dict[tuple[int, str, str], User] = {}
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
                if self.sqlite:
                    found = await _sqlite_page(conn, thread_id, after, upto, limit - len(out))
                else:
                    found = await conn.execute(
                        _message_select()
                        .where(msg.c.thread_id == thread_id, msg.c.seq > after, msg.c.seq <= upto)
                        .order_by(msg.c.seq)
                        .limit(limit - len(out))
                    )
                out.extend(_message(r, senders) for r in found)
            out = await _fold(conn, out, viewer)
        return out

    async def search_messages(
        self, user_id: int, words: Sequence[str], thread_id: int, offset: int, limit: int
    ) -> list[Message]:
        if not words:
            return []
        dialect = self.url.get_backend_name()
        params: dict[str, Any] = {"uid": user_id, "n": limit, "k": offset, "tid": thread_id}
        visible = (
            "JOIN thread_members tm ON tm.thread_id = m.thread_id AND tm.owner_id = :uid "
            "WHERE m.seq >= tm.first_seq AND (tm.left_seq IS NULL OR m.seq <= tm.left_seq) "
            "AND m.delete_seq IS NULL AND m.kind IN (1, 3) "
            "AND NOT EXISTS (SELECT 1 FROM hidden_messages h WHERE h.user_id = :uid "
            "AND h.thread_id = m.thread_id AND h.seq = m.seq) "
            + ("AND m.thread_id = :tid " if thread_id else "")
        )
        if dialect == "sqlite":
            params["q"] = " ".join('"' + w.replace('"', '""') + '"*' for w in words)
            if await self._search_per_thread(user_id, words, thread_id):
                return await self._search_sqlite(user_id, words, thread_id, offset, limit)
            sql = (
                "SELECT m.thread_id, m.seq FROM message_fts "
                "JOIN messages m ON m.thread_id = (message_fts.rowid >> 32) "
                "AND m.seq = (message_fts.rowid & 4294967295) "
                + visible
                + "AND message_fts MATCH :q "
                "ORDER BY bm25(message_fts), m.thread_id DESC, m.seq DESC LIMIT :n OFFSET :k"
            )
        elif dialect == "postgresql":
            params["q"] = " & ".join(f"{w}:*" for w in words)
            sql = (
                "SELECT m.thread_id, m.seq FROM messages m "
                + visible
                + "AND m.search @@ to_tsquery('simple', :q) "
                "ORDER BY ts_rank(m.search, to_tsquery('simple', :q)) DESC, "
                "m.thread_id DESC, m.seq DESC LIMIT :n OFFSET :k"
            )
        else:
            params["q"] = " ".join(f"+{w}*" for w in words)
            sql = (
                "SELECT m.thread_id, m.seq FROM messages m "
                + visible
                + "AND MATCH(m.text) AGAINST (:q IN BOOLEAN MODE) "
                "ORDER BY MATCH(m.text) AGAINST (:q IN BOOLEAN MODE) DESC, "
                "m.thread_id DESC, m.seq DESC LIMIT :n OFFSET :k"
            )
        async with self._read() as conn:
            hits = [
                (int(r.thread_id), int(r.seq)) for r in await conn.execute(sa.text(sql), params)
            ]
            if not hits:
                return []
            found = await conn.execute(
                _message_select().where(
                    t.messages.c.thread_id.in_({h[0] for h in hits}),
                    t.messages.c.seq.in_({h[1] for h in hits}),
                )
            )
            by_key = {
                (m.thread_id, m.seq): m
                for m in map(_message, _pairs(found, set(hits), "thread_id", "seq"))
            }
            rows = await _fold(conn, [by_key[h] for h in hits if h in by_key], 0)
        return rows

    async def _search_per_thread(self, user_id: int, words: Sequence[str], thread_id: int) -> bool:
        """Whether the words are common enough to search the user's threads one by one.

        One query over the whole index ranks every message that holds the words, whoever's
        it is: quick for rare words, slow for common ones in a large store (a word in a
        third of a million messages took a second). Thread by thread costs about a
        millisecond per thread whatever the store holds. The index's own counts of
        messages per word (fts5vocab) pick the cheaper.
        """
        if thread_id:
            return True
        m, least = t.thread_members, None
        async with self._read() as conn:
            for w in words:
                upper = w[:-1] + chr(ord(w[-1]) + 1)
                n = (
                    await conn.execute(
                        sa.text(
                            "SELECT coalesce(sum(doc), 0) FROM message_fts_vocab "
                            "WHERE term >= :lo AND term < :hi"
                        ),
                        {"lo": w, "hi": upper},
                    )
                ).scalar_one()
                least = int(n) if least is None else min(least, int(n))
            threads = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(m).where(m.c.owner_id == user_id)
                )
            ).scalar_one()
        return (least or 0) > self.per_thread_matches * max(1, int(threads))

    async def _search_sqlite(
        self, user_id: int, words: Sequence[str], thread_id: int, offset: int, limit: int
    ) -> list[Message]:
        """FTS5, one thread at a time: its rowids (thread_id << 32 | seq) are a range.

        FTS5 seeks a rowid range within each word's posting list, so each of the user's
        threads is searched only where the member may see it, and the cost follows the
        user's own messages, not the whole store's (a common word matched in every thread
        of every user made one global query rank hundreds of thousands of rows). Each
        thread gives its best offset + limit by bm25, whose figures are comparable across
        the queries (the statistics are the whole index's); the best of those is the page.
        """
        m = t.thread_members
        q = sa.select(m.c.thread_id, m.c.first_seq, m.c.left_seq).where(m.c.owner_id == user_id)
        if thread_id:
            q = q.where(m.c.thread_id == thread_id)
        match = " ".join('"' + w.replace('"', '""') + '"*' for w in words)
        want = offset + limit
        scored: list[tuple[float, int]] = []
        async with self._read() as conn:
            spans = [
                (int(r.thread_id), int(r.first_seq), int(r.left_seq or 0xFFFFFFFF))
                for r in await conn.execute(q)
            ]
            # SQLite allows 500 selects in one compound statement.
            for start in range(0, len(spans), 400):
                parts, params = [], {"q": match, "uid": user_id, "k": want}
                for i, (tid, lo, hi) in enumerate(spans[start : start + 400]):
                    params[f"lo{i}"] = (tid << 32) | max(lo, 0)
                    params[f"hi{i}"] = (tid << 32) | hi
                    params[f"t{i}"] = tid
                    parts.append(
                        "SELECT * FROM (SELECT message_fts.rowid AS rid, bm25(message_fts) AS "
                        "score FROM message_fts WHERE message_fts MATCH :q AND "
                        f"message_fts.rowid BETWEEN :lo{i} AND :hi{i} AND NOT EXISTS ("
                        "SELECT 1 FROM hidden_messages h WHERE h.user_id = :uid AND "
                        f"h.thread_id = :t{i} AND h.seq = (message_fts.rowid & 4294967295)) "
                        "ORDER BY score LIMIT :k)"
                    )
                rows = await conn.execute(sa.text(" UNION ALL ".join(parts)), params)
                scored.extend((float(r.score), int(r.rid)) for r in rows)
            scored.sort(key=lambda x: (x[0], -x[1]))
            hits = [(rid >> 32, rid & 0xFFFFFFFF) for _, rid in scored[offset:want]]
            if not hits:
                return []
            found = await conn.execute(
                _message_select().where(
                    t.messages.c.thread_id.in_({h[0] for h in hits}),
                    t.messages.c.seq.in_({h[1] for h in hits}),
                )
            )
            by_key = {
                (x.thread_id, x.seq): x
                for x in map(_message, _pairs(found, set(hits), "thread_id", "seq"))
            }
            return await _fold(conn, [by_key[h] for h in hits if h in by_key], 0)

    # -- the user's own log (delete for me) -------------------------------------------

    async def hide_messages(
        self, user_id: int, thread_id: int, seqs: Sequence[int]
    ) -> list[UserChange]:
        return await self._retry(
            lambda: self._write(lambda conn: _hide(conn, user_id, thread_id, seqs)),
            integrity=True,
        )

    async def user_changes(self, user_id: int, after_seq: int, limit: int) -> list[UserChange]:
        log = t.user_log
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(log)
                .where(log.c.user_id == user_id, log.c.seq > after_seq)
                .order_by(log.c.seq)
                .limit(limit)
            )
            return [_user_change(r) for r in rows]

    # -- attachments and blobs ----------------------------------------------------------

    async def add_attachment(self, record: AttachmentRecord, thumbnail: bytes | None) -> None:
        a, now = record.attachment, utcnow()

        def write(conn: Connection) -> None:
            b = t.blobs
            # An UPDATE first: it waits for a collection of the same blob in progress
            # (collect_blob holds the row), after which the row is gone and is inserted.
            res = conn.execute(b.update().where(b.c.sha256 == a.sha256).values(touch_time=now))
            if not res.rowcount:
                conn.execute(
                    b.insert().values(sha256=a.sha256, size=a.size, create_time=now, touch_time=now)
                )
            conn.execute(
                t.attachments.insert().values(
                    id=a.attachment_id,
                    owner_id=record.owner_id,
                    sha256=a.sha256,
                    size=a.size,
                    mime_type=a.mime_type,
                    name=a.name,
                    width=a.width,
                    height=a.height,
                    duration_ms=a.duration_ms,
                    blurhash=a.blurhash,
                    voice_note=a.voice_note,
                    thumbnail=thumbnail,
                    create_time=record.create_time,
                )
            )

        await self._retry(lambda: self._write(write), integrity=True)

    async def get_attachment(self, attachment_id: str) -> AttachmentRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(*_ATTACHMENT_COLUMNS).where(_att.c.id == attachment_id)
                )
            ).first()
        return _attachment_record(row) if row is not None else None

    async def attachment_thumbnail(self, attachment_id: str) -> bytes | None:
        async with self._read() as conn:
            raw = (
                await conn.execute(sa.select(_att.c.thumbnail).where(_att.c.id == attachment_id))
            ).scalar_one_or_none()
        return bytes(raw) if raw is not None else None

    async def may_read_attachment(self, user_id: int, attachment_id: str) -> bool:
        ma, m = t.message_attachments, t.thread_members
        visible = (
            sa.select(ma.c.seq)
            .join(m, sa.and_(m.c.thread_id == ma.c.thread_id, m.c.owner_id == user_id))
            .where(
                ma.c.attachment_id == attachment_id,
                ma.c.seq >= m.c.first_seq,
                sa.or_(m.c.left_seq.is_(None), ma.c.seq <= m.c.left_seq),
            )
            .limit(1)
        )
        own = sa.select(_att.c.id).where(_att.c.id == attachment_id, _att.c.owner_id == user_id)
        async with self._read() as conn:
            if (await conn.execute(own)).first() is not None:
                return True
            if (await conn.execute(visible)).first() is not None:
                return True
            return (await conn.execute(_picture_shown(attachment_id, user_id))).first() is not None

    async def drop_unsent_attachments(self, before: datetime) -> int:
        ma = t.message_attachments
        unsent = sa.delete(_att).where(
            _att.c.create_time < before,
            ~sa.exists().where(ma.c.attachment_id == _att.c.id),
            ~sa.exists().where(t.users.c.picture_id == _att.c.id),
        )
        async with self._tx() as conn:
            return int((await conn.execute(unsent)).rowcount or 0)

    async def collectable_blobs(self, before: datetime, limit: int) -> list[str]:
        b = t.blobs
        q = (
            sa.select(b.c.sha256)
            .where(b.c.touch_time < before, ~sa.exists().where(_att.c.sha256 == b.c.sha256))
            .order_by(b.c.touch_time)
            .limit(limit)
        )
        async with self._read() as conn:
            return [str(x) for x in (await conn.execute(q)).scalars()]

    async def collect_blob(
        self, sha256: str, before: datetime, delete: Callable[[], Awaitable[None]]
    ) -> bool:
        b = t.blobs
        gone = sa.delete(b).where(
            b.c.sha256 == sha256,
            b.c.touch_time < before,
            ~sa.exists().where(_att.c.sha256 == b.c.sha256),
        )
        async with self._tx() as conn:
            if not (await conn.execute(gone)).rowcount:
                return False
            # Still inside the transaction: the row stays locked (and on SQLite the write
            # lock held) until the bytes are gone, so an upload of the same content waits.
            await delete()
        return True

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

    # -- push notifications (push_svc's PushStore) ---------------------------------------

    async def set_push_target(self, target: PushTarget) -> PushTarget:
        """Register a device's target, replacing its earlier one; only a live device may."""
        pt, d = t.push_targets, t.devices
        now = utcnow()

        def run(conn: Connection) -> PushTarget:
            alive = conn.execute(
                sa.select(d.c.id).where(d.c.id == target.device_id, d.c.revoke_time.is_(None))
            ).first()
            if alive is None:
                raise NotFound(f"device {target.device_id} is not logged in", "NO_DEVICE")
            conn.execute(pt.delete().where(pt.c.device_id == target.device_id))
            conn.execute(
                pt.insert().values(
                    device_id=target.device_id,
                    user_id=target.user_id,
                    kind=target.kind.value,
                    endpoint=target.endpoint,
                    p256dh=target.p256dh,
                    auth=target.auth,
                    app_id=target.app_id,
                    pushkey=target.pushkey,
                    create_time=now,
                )
            )
            return replace(target, create_time=now)

        return await self._retry(lambda: self._write(run), integrity=True)

    async def get_push_target(self, device_id: int) -> PushTarget | None:
        pt = t.push_targets
        async with self._read() as conn:
            row = (await conn.execute(sa.select(pt).where(pt.c.device_id == device_id))).first()
        return _push_target(row) if row is not None else None

    async def delete_push_target(
        self, device_id: int, endpoint: str = "", pushkey: str = ""
    ) -> bool:
        """Remove a device's target; with `endpoint` (or `pushkey`) only while it is that one.

        A push service's "gone" answer names the target that was pushed to: a device that
        registered a new one meanwhile keeps it.
        """
        pt = t.push_targets
        where = [pt.c.device_id == device_id]
        if endpoint:
            where.append(pt.c.endpoint == endpoint)
        if pushkey:
            where.append(pt.c.pushkey == pushkey)
        async with self._tx() as conn:
            res = await conn.execute(pt.delete().where(*where))
            return bool(res.rowcount)

    async def push_targets(self, user_ids: Sequence[int]) -> list[PushTarget]:
        """The targets of these users' logged-in devices, by user then device."""
        pt, d = t.push_targets, t.devices
        ids = sorted(set(user_ids))
        out: list[PushTarget] = []
        async with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = await conn.execute(
                    sa.select(pt)
                    .join(d, d.c.id == pt.c.device_id)
                    .where(pt.c.user_id.in_(ids[start : start + 500]), d.c.revoke_time.is_(None))
                    .order_by(pt.c.user_id, pt.c.device_id)
                )
                out.extend(_push_target(r) for r in rows)
        return out

    async def claim_push_jobs(
        self, owner: str, grace_seconds: float, lease_seconds: float, limit: int
    ) -> list[PushJob]:
        """Take due jobs for `owner` under a lease; none is held by two workers at once.

        A job is due `grace_seconds` after its commit (a retry at its own time) and free
        when no live lease holds it. With it come the other free, untouched jobs of the same
        threads, due or not: one notification then covers a whole burst. PostgreSQL and
        MariaDB skip rows another worker is claiming (FOR UPDATE SKIP LOCKED); SQLite has
        one writer, so one claim runs at a time.
        """
        j = t.push_jobs

        def run(conn: Connection) -> list[PushJob]:
            now = utcnow()
            fresh = now - timedelta(seconds=grace_seconds)
            free = sa.or_(j.c.lease_until.is_(None), j.c.lease_until < now)
            due = sa.or_(
                sa.and_(j.c.device_id == 0, j.c.attempts == 0, j.c.due_time <= fresh),
                sa.and_(sa.or_(j.c.device_id != 0, j.c.attempts != 0), j.c.due_time <= now),
            )
            rows = conn.execute(
                sa.select(j)
                .where(free, due)
                .order_by(j.c.due_time, j.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            threads = sorted({r.thread_id for r in rows if _mergeable(r)})
            taken = {r.id: r for r in rows}
            for start in range(0, len(threads), 300):
                more = conn.execute(
                    sa.select(j)
                    .where(
                        j.c.thread_id.in_(threads[start : start + 300]),
                        free,
                        j.c.device_id == 0,
                        j.c.attempts == 0,
                        j.c.done_user == 0,
                    )
                    .with_for_update(skip_locked=True)
                ).all()
                taken.update((r.id, r) for r in more)
            until = now + timedelta(seconds=lease_seconds)
            ids = sorted(taken)
            won: set[int] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                # Still free: SQLite's driver reads outside the write transaction, so another
                # process on the same file may have taken some since they were read.
                conn.execute(
                    j.update()
                    .where(j.c.id.in_(chunk), free)
                    .values(lease_owner=owner, lease_until=until)
                )
                won.update(
                    int(x)
                    for x in conn.execute(
                        sa.select(j.c.id).where(
                            j.c.id.in_(chunk), j.c.lease_owner == owner, j.c.lease_until == until
                        )
                    ).scalars()
                )
            return [_push_job(taken[i], owner) for i in ids if i in won]

        return await self._retry(lambda: self._write(run))

    async def renew_push_jobs(
        self, job_ids: Sequence[int], owner: str, lease_seconds: float, done_user: int
    ) -> bool:
        """Extend the lease and record progress; False when `owner` no longer holds them all."""
        j = t.push_jobs
        until = utcnow() + timedelta(seconds=lease_seconds)
        async with self._tx() as conn:
            res = await conn.execute(
                j.update()
                .where(j.c.id.in_(list(job_ids)), j.c.lease_owner == owner)
                .values(lease_until=until, done_user=done_user)
            )
            return int(res.rowcount) == len(set(job_ids))

    async def finish_push_jobs(self, job_ids: Sequence[int], owner: str) -> None:
        j = t.push_jobs
        async with self._tx() as conn:
            await conn.execute(
                j.delete().where(j.c.id.in_(list(job_ids)), j.c.lease_owner == owner)
            )

    async def release_push_jobs(self, job_ids: Sequence[int], owner: str, delay: float) -> None:
        """Give jobs back, to be claimed again `delay` seconds from now (by any worker)."""
        j = t.push_jobs
        until = utcnow() + timedelta(seconds=delay)
        async with self._tx() as conn:
            await conn.execute(
                j.update()
                .where(j.c.id.in_(list(job_ids)), j.c.lease_owner == owner)
                .values(lease_until=until)
            )

    async def retry_pushes(self, retries: Sequence[tuple[PushJob, datetime]]) -> None:
        """Queue one device's push again (job.device_id, job.attempts) for the given time."""
        if not retries:
            return
        now = utcnow()
        async with self._tx() as conn:
            await conn.execute(
                t.push_jobs.insert(),
                [
                    dict(
                        thread_id=job.thread_id,
                        first_seq=job.first_seq,
                        last_seq=job.last_seq,
                        device_id=job.device_id,
                        attempts=job.attempts,
                        done_user=0,
                        due_time=at,
                        lease_owner=None,
                        lease_until=None,
                        create_time=now,
                    )
                    for job, at in retries
                ],
            )

    async def push_jobs(self) -> list[PushJob]:
        """Every queued job, oldest first (for operators and tests)."""
        j = t.push_jobs
        async with self._read() as conn:
            rows = await conn.execute(sa.select(j).order_by(j.c.id))
            return [_push_job(r, r.lease_owner or "") for r in rows]

    async def push_contexts(self, spans: Sequence[tuple[int, int, int]]) -> dict[int, PushContext]:
        """For each (thread, first_seq, last_seq): the thread, those messages, its members."""
        th, m, u = t.threads, t.thread_members, t.users
        wanted: dict[int, tuple[int, int]] = {}
        for tid, lo, hi in spans:
            a, b = wanted.get(tid, (lo, hi))
            wanted[tid] = (min(a, lo), max(b, hi))
        ids = sorted(wanted)
        out: dict[int, PushContext] = {}
        if not ids:
            return out
        ranges = [(tid, max(lo - 1, hi - PUSH_MESSAGES), hi) for tid, (lo, hi) in wanted.items()]
        messages = await self.messages_after(sorted(ranges), PUSH_MESSAGES * len(ranges))
        by_thread: dict[int, list[Message]] = defaultdict(list)
        for msg_ in messages:
            by_thread[msg_.thread_id].append(msg_)
        recipients: dict[int, list[PushRecipient]] = defaultdict(list)
        async with self._read() as conn:
            for start in range(0, len(ids), 300):
                chunk = ids[start : start + 300]
                for r in await conn.execute(sa.select(th).where(th.c.id.in_(chunk))):
                    out[int(r.id)] = PushContext(
                        int(r.id), ThreadKind(r.kind), r.title, by_thread[int(r.id)], []
                    )
                rows = await conn.execute(
                    sa.select(
                        m.c.thread_id,
                        m.c.owner_id,
                        m.c.first_seq,
                        m.c.left_seq,
                        m.c.read_seq,
                        m.c.muted_until,
                        u.c.notification_preview,
                    )
                    .join(u, u.c.id == m.c.owner_id)
                    .where(m.c.thread_id.in_(chunk))
                    .order_by(m.c.thread_id, m.c.owner_id)
                )
                for r in rows:
                    recipients[int(r.thread_id)].append(
                        PushRecipient(
                            int(r.owner_id),
                            int(r.first_seq),
                            r.left_seq,
                            int(r.read_seq),
                            _utc(r.muted_until),
                            _preview(r.notification_preview),
                        )
                    )
        return {tid: replace(c, recipients=recipients[tid]) for tid, c in out.items()}

    async def server_secret(self, name: str, make: Callable[[], str]) -> str:
        """The named secret, made with `make` and stored by the first process that asks."""
        ss = t.server_secrets

        async def read() -> str | None:
            async with self._read() as conn:
                found = (
                    await conn.execute(sa.select(ss.c.value).where(ss.c.name == name))
                ).scalar_one_or_none()
            return None if found is None else str(found)

        value = await read()
        if value is not None:
            return value
        try:
            async with self._tx() as conn:
                await conn.execute(
                    ss.insert().values(name=name, value=make(), create_time=utcnow())
                )
        except exc.IntegrityError:
            pass  # another process stored it first: everyone uses that one
        value = await read()
        assert value is not None
        return value

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
_th, _mem, _msg, _att = t.threads, t.thread_members, t.messages, t.attachments
_ATTACHMENT_COLUMNS = (
    *(c for c in _att.c if c.name != "thumbnail"),
    _att.c.thumbnail.is_not(None).label("has_thumb"),
)
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


_WITH_TARGETS = sa.select(_th.c.id).where(
    _th.c.id.in_(_in("threads")),
    sa.exists().where(_mem.c.thread_id == _th.c.id, t.push_targets.c.user_id == _mem.c.owner_id),
)

# What an append checks before it numbers anything, in one statement (one round trip):
# rows (what, a, b) — the senders' active memberships (owner, thread), blocks among the
# people of its direct sends (blocker, blocked), its deleted peers (user, 0), and its
# threads where someone has a push target (thread, 0).
_CHECK_MEMBER, _CHECK_BLOCK, _CHECK_GONE, _CHECK_PUSH = 1, 2, 3, 4
# Most ids a checks statement binds per list (SQLite's expanding IN lists); more go the long way.
_CHECKS_MAX = 300


def _checks_statement(arrays: bool) -> sa.CompoundSelect[Any]:
    """The append's checks; `arrays`: lists bound as one array each (`= ANY(:x)`, PostgreSQL).

    An expanding IN list is rendered anew at every execution (its length changes), which
    showed in the message nodes' profile; an array is one parameter of a statement compiled
    once, and asyncpg prepares it once per connection.
    """

    def among(col: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
        if arrays:
            return col == sa.any_(sa.bindparam(name, type_=sa.ARRAY(sa.BigInteger)))
        return col.in_(_in(name))

    def tag(what: int) -> sa.ColumnElement[Any]:
        return sa.literal_column(str(what), sa.Integer).label("what")

    none = sa.literal_column("0", sa.BigInteger)
    return sa.union_all(
        sa.select(tag(_CHECK_MEMBER), _mem.c.owner_id.label("a"), _mem.c.thread_id.label("b"))
        .where(among(_mem.c.owner_id, "owners"), among(_mem.c.thread_id, "threads"))
        .where(_mem.c.left_seq.is_(None)),
        sa.select(
            tag(_CHECK_BLOCK),
            t.blocks.c.blocker_id.label("a"),
            t.blocks.c.blocked_id.label("b"),
        ).where(among(t.blocks.c.blocker_id, "people"), among(t.blocks.c.blocked_id, "people")),
        sa.select(tag(_CHECK_GONE), t.users.c.id.label("a"), none.label("b")).where(
            among(t.users.c.id, "peers"), t.users.c.delete_time.is_not(None)
        ),
        sa.select(tag(_CHECK_PUSH), _th.c.id.label("a"), none.label("b")).where(
            among(_th.c.id, "threads"),
            sa.exists().where(
                _mem.c.thread_id == _th.c.id, t.push_targets.c.user_id == _mem.c.owner_id
            ),
        ),
    )


_CHECKS = {False: _checks_statement(False), True: _checks_statement(True)}
_TOUCH_ARRAY = (
    _mem.update()
    .where(
        _mem.c.thread_id == sa.any_(sa.bindparam("threads", type_=sa.ARRAY(sa.BigInteger))),
        _mem.c.left_seq.is_(None),
    )
    .values(update_time=sa.bindparam("now"))
)


def _arrays(conn: Connection) -> bool:
    """Whether lists are bound as arrays (PostgreSQL) rather than expanded into IN lists."""
    return conn.dialect.name == "postgresql"


@dataclass(frozen=True, slots=True)
class _Checked:
    """What an append may store, as its checks found it.

    Active (sender, thread) pairs, barred direct sends, and the threads that queue a push
    job (None: not looked at, `_queue_pushes` asks).
    """

    allowed: set[tuple[int, int]]
    barred: dict[tuple[int, int], Refusal]
    pushing: set[int] | None


def _check(
    conn: Connection, batch: Sequence[NewMessage], existing: dict[tuple[int, str], Message]
) -> _Checked:
    """Membership, blocks and push targets of a batch, read in its own transaction.

    One statement when the batch's lists are small (always, but for bulk loads), else the
    three of before (`_ACTIVE`, `_barred`, `_queue_pushes`' own look). A block or a removal
    made a moment ago holds; a push target registered after this is for later messages.
    """
    pairs = {
        (n.sender.user_id, n.thread_id)
        for n in batch
        if (n.sender.user_id, n.client_msg_id) not in existing
    }
    direct = {
        (n.sender.user_id, n.peer_id)
        for n in batch
        if n.peer_id
        and n.peer_id != n.sender.user_id
        and (n.sender.user_id, n.client_msg_id) not in existing
    }
    owners = {p[0] for p in pairs}
    threads = {p[1] for p in pairs}
    people = {x for pair in direct for x in pair}
    if max(len(owners), len(threads), len(people)) > _CHECKS_MAX:
        allowed = _active(conn, list(pairs))
        return _Checked(allowed, _barred(conn, batch, existing, allowed), None)
    rows = conn.execute(
        _CHECKS[_arrays(conn)],
        {
            "owners": list(owners),
            "threads": list(threads),
            "people": list(people),
            "peers": list({p for _, p in direct}),
        },
    )
    allowed = set()
    links: set[tuple[int, int]] = set()
    gone: set[int] = set()
    pushing: set[int] = set()
    for r in rows:
        what, a, b = int(r.what), int(r.a), int(r.b)
        if what == _CHECK_MEMBER and (a, b) in pairs:
            allowed.add((a, b))
        elif what == _CHECK_BLOCK:
            links.add((a, b))
        elif what == _CHECK_GONE:
            gone.add(a)
        elif what == _CHECK_PUSH:
            pushing.add(a)
    return _Checked(allowed, _refusals(direct, gone, links), pushing)


def _refusals(
    direct: Iterable[tuple[int, int]], gone: set[int], links: set[tuple[int, int]]
) -> dict[tuple[int, int], Refusal]:
    """Which (sender, peer) direct sends are refused: a deleted peer, a block either way."""
    out: dict[tuple[int, int], Refusal] = {}
    for sender, peer in direct:
        if peer in gone:
            out[(sender, peer)] = Refusal.PEER_DELETED
        elif (peer, sender) in links:
            out[(sender, peer)] = Refusal.BLOCKED_BY_PEER
        elif (sender, peer) in links:
            out[(sender, peer)] = Refusal.BLOCKING_PEER
    return out


def _active(conn: Connection, pairs: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
    """Which (owner, thread) pairs are active memberships, in chunks of IN lists."""
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
    return allowed


# The message insert as driver SQL, per dialect name: (SQL, each parameter's bind processor).
_DRIVER_INSERTS: dict[
    str, tuple[str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...]]
] = {}
_INSERT_COLUMNS = (
    "thread_id",
    "seq",
    "msg_id",
    "sender_id",
    "sender_device_id",
    "client_msg_id",
    "kind",
    "text",
    "system",
    "create_time",
    "target_seq",
    "payload",
)


def _driver_insert(
    dialect: Dialect,
) -> tuple[str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...]]:
    """The messages insert compiled once, with the columns' own bind processors, in order."""
    cached = _DRIVER_INSERTS.get(dialect.name)
    if cached is None:
        stmt = _msg.insert().values({c: sa.bindparam(c) for c in _INSERT_COLUMNS})
        compiled = stmt.compile(dialect=dialect)
        order = tuple(compiled.positiontup or ())
        assert sorted(order) == sorted(_INSERT_COLUMNS), order
        procs = tuple(_msg.c[name].type._cached_bind_processor(dialect) for name in order)
        cached = _DRIVER_INSERTS[dialect.name] = (str(compiled), order, procs)
    return cached


# Rows per multi-row INSERT on SQLite: 12 parameters each, far below its 32,766 limit.
_INSERT_ROWS = 64


def _insert_messages(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """A batch's messages; on SQLite as multi-row INSERTs of driver SQL compiled once.

    On the writer thread every call into SQLite lets go of the GIL and must take it back
    from the event loop, which keeps it for up to the interpreter's switch interval (5 ms)
    when it is busy: an executemany of 40 rows was 40 such waits, the largest part of a
    group commit's time under load. One INSERT of many rows is one step into SQLite. The
    values are bound as Core would bind them (each column's own bind processor; a batch's
    one time converted once), and errors are still SQLAlchemy's (exec_driver_sql wraps
    them), so a repeated key is the same IntegrityError. Other engines keep Core.
    """
    if conn.dialect.name != "sqlite" or conn.dialect.paramstyle != "qmark":
        conn.execute(_msg.insert(), rows)
        return
    sql, order, procs = _driver_insert(conn.dialect)
    head, _, one = sql.partition(" VALUES ")
    done: dict[tuple[int, Any], Any] = {}
    values: list[Any] = []
    for row in rows:
        for at, name in enumerate(order):
            value = row[name]
            proc = procs[at]
            if proc is not None and value is not None:
                key = (at, value)
                bound = done.get(key)
                if bound is None:
                    bound = done[key] = proc(value)
                value = bound
            values.append(value)
    width = len(order)
    for start in range(0, len(rows), _INSERT_ROWS):
        count = min(_INSERT_ROWS, len(rows) - start)
        part = values[start * width : (start + count) * width]
        conn.exec_driver_sql(f"{head} VALUES {', '.join([one] * count)}", tuple(part))


def _bump_seqs(conn: Connection, counts: dict[int, int], now: datetime) -> dict[int, int]:
    """Reserve sequence numbers in several threads at once; the last one of each.

    SQLite has one writer, so one UPDATE for every thread of a batch (instead of one per
    thread) cannot deadlock; other engines lock thread rows one by one in id order, so two
    concurrent batches never wait for each other in a cycle.
    """
    if len(counts) > 1 and conn.dialect.name == "sqlite" and conn.dialect.update_returning:
        ids = sorted(counts)
        out: dict[int, int] = {}
        for start in range(0, len(ids), 300):
            part = ids[start : start + 300]
            by = sa.case({tid: counts[tid] for tid in part}, value=_th.c.id)
            rows = conn.execute(
                _th.update()
                .where(_th.c.id.in_(part))
                .values(last_seq=_th.c.last_seq + by, update_time=now)
                .returning(_th.c.id, _th.c.last_seq)
            )
            out.update((int(r.id), int(r.last_seq)) for r in rows)
        missing = [tid for tid in ids if tid not in out]
        if missing:
            raise NotFound(f"thread {missing[0]} does not exist")
        return out
    return {tid: _bump_seq(conn, tid, n, now) for tid, n in sorted(counts.items())}


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
    if created.notify:
        _queue_pushes(conn, {thread_id: (1, 1)}, now)
    return thread_id, message


def _change_group(
    conn: Connection,
    thread_id: int,
    changes: Sequence[MemberChange],
    title: str | None,
    event: NewMessage,
    max_members: int | None,
) -> Message:
    m = t.thread_members
    now = utcnow()
    # Bumping the thread's seq first locks its row: changes to one group commit one at
    # a time across every message_svc process, and the check below sees the others.
    seq = _bump_seq(conn, thread_id, 1, now)
    member_changes(conn, thread_id, changes, title, seq, now)
    _check_group(conn, thread_id, max_members)
    message = _insert_one(conn, thread_id, seq, event, now)
    if event.notify:
        _queue_pushes(conn, {thread_id: (seq, seq)}, now)
    conn.execute(
        m.update().where(m.c.thread_id == thread_id, m.c.left_seq.is_(None)).values(update_time=now)
    )
    return message


def member_changes(
    conn: Connection,
    thread_id: int,
    changes: Sequence[MemberChange],
    title: str | None,
    seq: int,
    now: datetime,
) -> None:
    """A group change taking effect at `seq`: the title, joins, leaves and roles.

    The SQL store calls it with the seq it just allocated; the split store with a pending
    seq it settles once the log has numbered the system message, and on replay.
    """
    th, m = t.threads, t.thread_members
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

    Plain text goes straight in. Everything else (attachments, replies, forwards, and the
    events: reactions, edits, deletes) is checked against the log here, in this
    transaction, in batch order (`_Rich`): a second delete of one message in a batch is
    refused like one in a later batch; then, once numbered, its effects are applied.
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
    # moment ago cannot slip a message in (and so are blocks, and push targets, at once).
    checked = _check(conn, batch, existing)
    allowed, barred = checked.allowed, checked.barred
    fresh: dict[tuple[int, str], int] = {}
    per_thread: dict[int, list[int]] = defaultdict(list)
    rich: _Rich | None = None
    prepared: dict[int, _Prepared] = {}
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
            if not n.plain:
                rich = rich or _Rich(conn)
                prep = rich.prepare(n)
                if isinstance(prep, Refusal):
                    out[i] = Refused(n.thread_id, prep)
                    continue
                prepared[i] = prep
            fresh[key] = i
            per_thread[n.thread_id].append(i)
    rows_to_insert: list[dict[str, Any]] = []
    notify: dict[int, tuple[int, int]] = {}
    touched: set[int] = set()
    # Threads are locked in id order so concurrent batches cannot deadlock.
    lasts = _bump_seqs(conn, {tid: len(idxs) for tid, idxs in per_thread.items()}, now)
    ids = iter(new_msg_ids(len(fresh)))
    for thread_id, idxs in sorted(per_thread.items()):
        last = lasts[thread_id]
        for offset, i in enumerate(idxs):
            n = batch[i]
            seq = last - len(idxs) + 1 + offset
            if n.notify:
                lo, _ = notify.get(thread_id, (seq, seq))
                notify[thread_id] = (lo, seq)
            msg_id = next(ids)
            prep_ = prepared.get(i)
            kind = prep_.kind if prep_ is not None else n.kind
            text = prep_.text if prep_ is not None else n.text
            payload = prep_.payload if prep_ is not None else None
            if kind.is_content:
                touched.add(thread_id)
            rows_to_insert.append(
                dict(
                    thread_id=thread_id,
                    seq=seq,
                    msg_id=msg_id,
                    sender_id=n.sender.user_id,
                    sender_device_id=n.sender_device_id,
                    client_msg_id=n.client_msg_id,
                    kind=kind.value,
                    text=text,
                    system=_system_to_json(n.system),
                    create_time=now,
                    target_seq=n.target_seq or None,
                    payload=payload,
                )
            )
            message = Message(
                thread_id,
                seq,
                msg_id,
                n.sender,
                n.sender_device_id,
                n.client_msg_id,
                kind,
                text if kind is not MessageKind.REACTION else "",
                now,
                n.system,
                target_seq=n.target_seq,
                emoji=text if kind is MessageKind.REACTION else "",
            )
            if prep_ is not None:
                message = prep_.shape(message)
                assert rich is not None
                rich.apply(prep_, n, seq, now)
            out[i] = Appended(message, False)
    if rows_to_insert:
        _insert_messages(conn, rows_to_insert)
        if touched:
            touch = _TOUCH_ARRAY if _arrays(conn) else _TOUCH
            conn.execute(touch, {"threads": list(touched), "now": now})
    _queue_pushes(conn, notify, now, checked.pushing)
    for i, n in enumerate(batch):
        if out[i] is None:  # repeated inside this batch: same answer as the first
            first = out[fresh[(n.sender.user_id, n.client_msg_id)]]
            assert isinstance(first, Appended)
            out[i] = Appended(first.message, True)
    return [a for a in out if a is not None]


def _queue_pushes(
    conn: Connection,
    spans: dict[int, tuple[int, int]],
    now: datetime,
    wanted: set[int] | None = None,
) -> None:
    """One push job per thread of the commit, for its new messages that notify.

    Written in the commit's own transaction: a message acknowledged to its sender has its
    push queued durably, whichever process dies next. The worker expands it to recipients
    and honours the grace period from `now`. `wanted`: the threads with a push target, when
    the caller read them already (`_check`).
    """
    if not spans:
        return
    # Only threads where someone could be pushed to: most chats, and every benchmark, have
    # no push target at all, and then a row would only cost the worker a claim and a delete.
    # A target registered after this check is for messages after it.
    if wanted is None:
        wanted = set(conn.execute(_WITH_TARGETS, {"threads": list(spans)}).scalars())
    spans = {tid: span for tid, span in spans.items() if tid in wanted}
    if not spans:
        return
    conn.execute(
        t.push_jobs.insert(),
        [
            dict(
                thread_id=tid,
                first_seq=lo,
                last_seq=hi,
                device_id=0,
                attempts=0,
                done_user=0,
                due_time=now,
                lease_owner=None,
                lease_until=None,
                create_time=now,
            )
            for tid, (lo, hi) in spans.items()
        ],
    )


MAX_SNIPPET = 100
# SQLite search: above this many messages per thread of the user holding the words, search
# their threads one by one (measured break-even: ~1.5 ms per thread query, ~3 us per match).
PER_THREAD_MATCHES = 500


def snippet(m: Message) -> str:
    """What a reply quotes of a message: the start of its text, else its first file's name."""
    text = " ".join(m.text.split())
    if text:
        return text if len(text) <= MAX_SNIPPET else text[: MAX_SNIPPET - 1] + "…"
    if m.attachments:
        return m.attachments[0].name or m.attachments[0].mime_type
    return ""


@dataclass
class _Prepared:
    """A checked rich entry: what to store, and what it does to its target when numbered."""

    kind: MessageKind
    text: str
    attachments: tuple[Attachment, ...] = ()
    reply: ReplyTo | None = None
    forwarded: bool = False
    target: Message | None = None

    @property
    def payload(self) -> str | None:
        return _payload_json(self.attachments, self.reply, self.forwarded)

    def shape(self, m: Message) -> Message:
        return replace(
            m, attachments=self.attachments, reply_to=self.reply, forwarded=self.forwarded
        )


class _Rich:
    """Checks and effects of rich entries inside one appending transaction.

    Targets are read once and kept as this transaction changes them, so entries later in the
    batch see what earlier ones did (an edit after a delete of the same message is refused).
    """

    def __init__(
        self, conn: Connection, bodies: Mapping[tuple[int, int], Message] | None = None
    ) -> None:
        """`bodies`: the split store's, whose message rows hold no text (the log does).

        There the texts of quoted and forwarded messages come from `bodies` (read from the
        log before the transaction), and an edit records which event holds the new text
        instead of writing it onto its target.
        """
        self.conn = conn
        self.bodies = bodies
        self.targets: dict[tuple[int, int], Message | None] = {}
        self.members: dict[tuple[int, int], Any] = {}
        self.kinds: dict[int, int] = {}

    def _target(self, thread_id: int, seq: int) -> Message | None:
        key = (thread_id, seq)
        if key not in self.targets:
            row = self.conn.execute(
                _message_select().where(_msg.c.thread_id == thread_id, _msg.c.seq == seq)
            ).first()
            found = _message(row) if row is not None else None
            body = self.bodies.get(key) if self.bodies is not None else None
            if found is not None and body is not None:
                found = replace(
                    found,
                    text=body.text,
                    attachments=body.attachments,
                    reply_to=body.reply_to,
                    forwarded=body.forwarded,
                )
            self.targets[key] = found
        return self.targets[key]

    def _member(self, user_id: int, thread_id: int) -> Any:
        key = (user_id, thread_id)
        if key not in self.members:
            self.members[key] = self.conn.execute(
                sa.select(_mem.c.first_seq, _mem.c.left_seq, _mem.c.role).where(
                    _mem.c.owner_id == user_id, _mem.c.thread_id == thread_id
                )
            ).first()
        return self.members[key]

    def _visible(self, user_id: int, thread_id: int, seq: int) -> Message | None:
        member = self._member(user_id, thread_id)
        if member is None or seq < member.first_seq:
            return None
        if member.left_seq is not None and seq > member.left_seq:
            return None
        return self._target(thread_id, seq)

    def _group_admin(self, user_id: int, thread_id: int) -> bool:
        if thread_id not in self.kinds:
            self.kinds[thread_id] = int(
                self.conn.execute(sa.select(_th.c.kind).where(_th.c.id == thread_id)).scalar_one()
            )
        member = self._member(user_id, thread_id)
        return (
            self.kinds[thread_id] == ThreadKind.GROUP.value
            and member is not None
            and member.left_seq is None
            and member.role == Role.ADMIN.value
        )

    def _changeable(self, n: NewMessage, seq: int) -> Message | Refusal:
        target = self._visible(n.sender.user_id, n.thread_id, seq)
        if target is None:
            return Refusal.MESSAGE_NOT_FOUND
        if not target.kind.editable:
            return Refusal.NOT_EDITABLE
        if target.deleted:
            return Refusal.MESSAGE_DELETED
        return target

    def prepare(self, n: NewMessage) -> _Prepared | Refusal:
        uid = n.sender.user_id
        prep = _Prepared(n.kind, n.text)
        if n.kind.is_event:
            target = self._changeable(n, n.target_seq)
            if isinstance(target, Refusal):
                return target
            late = n.deadline is not None and target.create_time < n.deadline
            if n.kind is MessageKind.EDIT:
                if target.sender.user_id != uid:
                    return Refusal.NOT_AUTHOR
                if late:
                    return Refusal.WINDOW_CLOSED
                self.targets[(n.thread_id, n.target_seq)] = replace(target, text=n.text)
            elif n.kind is MessageKind.DELETE:
                admin = self._group_admin(uid, n.thread_id)
                if target.sender.user_id != uid and not admin:
                    return Refusal.NOT_AUTHOR
                if late and not admin:
                    return Refusal.WINDOW_CLOSED
                self.targets[(n.thread_id, n.target_seq)] = replace(target, deleted=True)
            prep.target = target
            return prep
        if n.reply_to_seq:
            quoted = self._changeable(n, n.reply_to_seq)
            if isinstance(quoted, Refusal):
                return quoted
            prep.reply = ReplyTo(quoted.seq, quoted.sender, snippet(quoted), quoted.kind)
        if n.forward is not None:
            source = self._visible(uid, *n.forward)
            if source is None:
                return Refusal.FORWARD_NOT_VISIBLE
            if not source.kind.editable:
                return Refusal.NOT_EDITABLE
            if source.deleted:
                return Refusal.MESSAGE_DELETED
            prep.kind, prep.text = source.kind, source.text
            prep.attachments, prep.forwarded = source.attachments, True
            return prep
        if n.attachment_ids:
            ids = list(dict.fromkeys(n.attachment_ids))
            rows = {
                r.id: r
                for r in self.conn.execute(
                    sa.select(*_ATTACHMENT_COLUMNS).where(_att.c.id.in_(ids))
                )
            }
            found = [rows.get(i) for i in ids]
            if any(r is None or int(r.owner_id) != uid for r in found):
                return Refusal.ATTACHMENT_NOT_FOUND
            prep.attachments = tuple(_attachment_record(r).attachment for r in found)
        return prep

    def apply(self, prep: _Prepared, n: NewMessage, seq: int, now: datetime) -> None:
        """The entry is numbered `seq`: link its attachments, change its target."""
        conn, thread_id = self.conn, n.thread_id
        if prep.attachments:
            conn.execute(
                t.message_attachments.insert(),
                [
                    dict(thread_id=thread_id, seq=seq, position=i, attachment_id=a.attachment_id)
                    for i, a in enumerate(prep.attachments)
                ],
            )
        target = n.target_seq
        where = (_msg.c.thread_id == thread_id, _msg.c.seq == target)
        if n.kind is MessageKind.EDIT:
            text = {} if self.bodies is not None else {"text": n.text}
            conn.execute(_msg.update().where(*where).values(**text, edit_seq=seq, edit_time=now))
        elif n.kind is MessageKind.REACTION:
            r = t.reactions
            key = (r.c.thread_id == thread_id, r.c.seq == target, r.c.user_id == n.sender.user_id)
            conn.execute(r.delete().where(*key))
            if n.text:
                conn.execute(
                    r.insert().values(
                        thread_id=thread_id,
                        seq=target,
                        user_id=n.sender.user_id,
                        emoji=n.text,
                        event_seq=seq,
                        create_time=now,
                    )
                )
        elif n.kind is MessageKind.DELETE:
            # The text and the references go; edits lose their text too. Blobs no longer
            # referenced wait a grace period from now before they are collected.
            conn.execute(
                _msg.update()
                .where(*where)
                .values(text="", payload=None, delete_seq=seq, delete_time=now)
            )
            conn.execute(
                _msg.update()
                .where(
                    _msg.c.thread_id == thread_id,
                    _msg.c.target_seq == target,
                    _msg.c.kind == MessageKind.EDIT.value,
                )
                .values(text="")
            )
            ma = t.message_attachments
            shas = [
                str(x)
                for x in conn.execute(
                    sa.select(_att.c.sha256)
                    .join(ma, ma.c.attachment_id == _att.c.id)
                    .where(ma.c.thread_id == thread_id, ma.c.seq == target)
                ).scalars()
            ]
            conn.execute(ma.delete().where(ma.c.thread_id == thread_id, ma.c.seq == target))
            r = t.reactions
            conn.execute(r.delete().where(r.c.thread_id == thread_id, r.c.seq == target))
            if shas:
                conn.execute(
                    t.blobs.update().where(t.blobs.c.sha256.in_(shas)).values(touch_time=now)
                )


def _barred(
    conn: Connection,
    batch: Sequence[NewMessage],
    existing: dict[tuple[int, str], Message],
    allowed: set[tuple[int, int]],
) -> dict[tuple[int, int], Refusal]:
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
    return _refusals(direct, gone, links)


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


def _keys_in(
    thread: sa.ColumnElement[Any], seq: sa.ColumnElement[Any], keys: set[tuple[int, int]]
) -> sa.ColumnElement[bool]:
    """A superset of `keys` ((thread, seq) pairs) for `_pairs` to narrow, cheap to build.

    A page of a thread's log is a run of seqs: a range then, not hundreds of bound values
    (building an IN list of 500 cost more than the query it was for). Scattered seqs (a
    search's hits) keep their IN lists.
    """
    by_thread: dict[int, list[int]] = defaultdict(list)
    for th, sq in keys:
        by_thread[th].append(sq)
    if len(by_thread) > 8:
        return sa.and_(thread.in_(list(by_thread)), seq.in_({k[1] for k in keys}))
    terms = []
    for th, seqs in by_thread.items():
        lo, hi = min(seqs), max(seqs)
        if hi - lo < 2 * len(seqs):
            terms.append(sa.and_(thread == th, seq.between(lo, hi)))
        else:
            terms.append(sa.and_(thread == th, seq.in_(seqs)))
    return sa.or_(*terms)


async def _fold(conn: AsyncConnection, rows: list[Message], viewer: int) -> list[Message]:
    """Every member's current reaction on each message; with a viewer, what they hid."""
    if not rows:
        return rows
    keys = {(m.thread_id, m.seq) for m in rows if m.kind.editable and not m.deleted}
    reactions: dict[tuple[int, int], list[Reaction]] = defaultdict(list)
    r, u = t.reactions, t.users
    todo = sorted(keys)
    for start in range(0, len(todo), 500):
        chunk = set(todo[start : start + 500])
        found = await conn.execute(
            sa.select(r, u.c.username, u.c.display_name)
            .join(u, u.c.id == r.c.user_id)
            .where(_keys_in(r.c.thread_id, r.c.seq, chunk))
            .order_by(r.c.event_seq)
        )
        for x in _pairs(found, chunk, "thread_id", "seq"):
            reactions[(int(x.thread_id), int(x.seq))].append(
                Reaction(
                    User(int(x.user_id), x.username, x.display_name),
                    x.emoji,
                    int(x.event_seq),
                    _aware(x.create_time),
                )
            )
    hidden: set[tuple[int, int]] = set()
    if viewer:
        h = t.hidden_messages
        every = sorted({(m.thread_id, m.seq) for m in rows})
        for start in range(0, len(every), 500):
            chunk = set(every[start : start + 500])
            found = await conn.execute(
                sa.select(h.c.thread_id, h.c.seq).where(
                    h.c.user_id == viewer, _keys_in(h.c.thread_id, h.c.seq, chunk)
                )
            )
            hidden.update(
                (int(x.thread_id), int(x.seq)) for x in _pairs(found, chunk, "thread_id", "seq")
            )
    if not reactions and not hidden:
        return rows
    out: list[Message] = []
    for m in rows:
        key = (m.thread_id, m.seq)
        if key in hidden:
            m = replace(m, hidden=True, text="", attachments=(), reply_to=None, emoji="")
        elif key in reactions:
            m = replace(m, reactions=tuple(reactions[key]))
        out.append(m)
    return out


def _hide(conn: Connection, user_id: int, thread_id: int, seqs: Sequence[int]) -> list[UserChange]:
    """Hide what is not hidden yet; the user's log seq is bumped like a thread's."""
    h, log, u = t.hidden_messages, t.user_log, t.users
    wanted = list(dict.fromkeys(seqs))
    if not wanted:
        return []
    already = {
        int(x)
        for x in conn.execute(
            sa.select(h.c.seq).where(
                h.c.user_id == user_id, h.c.thread_id == thread_id, h.c.seq.in_(wanted)
            )
        ).scalars()
    }
    new = [s_ for s_ in wanted if s_ not in already]
    if not new:
        return []
    now = utcnow()
    n = len(new)
    if conn.dialect.update_returning:
        last = int(
            conn.execute(
                u.update()
                .where(u.c.id == user_id)
                .values(log_seq=u.c.log_seq + n)
                .returning(u.c.log_seq)
            ).scalar_one()
        )
    else:
        before = int(
            conn.execute(
                sa.select(u.c.log_seq).where(u.c.id == user_id).with_for_update()
            ).scalar_one()
        )
        conn.execute(u.update().where(u.c.id == user_id).values(log_seq=u.c.log_seq + n))
        last = before + n
    conn.execute(
        h.insert(),
        [dict(user_id=user_id, thread_id=thread_id, seq=s_, create_time=now) for s_ in new],
    )
    changes = [
        UserChange(last - n + 1 + i, UserChangeKind.HIDE_MESSAGE, Cursor(thread_id, s_), now)
        for i, s_ in enumerate(new)
    ]
    conn.execute(
        log.insert(),
        [
            dict(
                user_id=user_id,
                seq=c.seq,
                kind=c.kind.value,
                thread_id=thread_id,
                target_seq=c.message.seq,
                create_time=now,
            )
            for c in changes
        ],
    )
    return changes


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


def _picture_shown(attachment_id: str, viewer_id: int) -> sa.Select[Any]:
    """A row when the attachment is the profile picture of someone the viewer may see.

    The owner has the viewer as a contact or both are active members of one thread, and
    neither blocked the other (the rule of message_svc.profiles).
    """
    u, c, b = t.users, t.contacts, t.blocks
    mine, theirs = t.thread_members.alias("mine"), t.thread_members.alias("theirs")
    contact = sa.exists().where(c.c.owner_id == u.c.id, c.c.contact_id == viewer_id)
    shared = sa.exists().where(
        mine.c.owner_id == viewer_id,
        mine.c.left_seq.is_(None),
        theirs.c.thread_id == mine.c.thread_id,
        theirs.c.owner_id == u.c.id,
        theirs.c.left_seq.is_(None),
    )
    blocked = sa.exists().where(
        sa.or_(
            sa.and_(b.c.blocker_id == u.c.id, b.c.blocked_id == viewer_id),
            sa.and_(b.c.blocker_id == viewer_id, b.c.blocked_id == u.c.id),
        )
    )
    return (
        sa.select(u.c.id)
        .where(u.c.picture_id == attachment_id, sa.or_(contact, shared), ~blocked)
        .limit(1)
    )


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
    conn.execute(t.push_targets.delete().where(t.push_targets.c.user_id == user_id))
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
            about="",
            picture_id=None,
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
