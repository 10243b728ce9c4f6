"""Tables of the system of record and the migrations that create and change them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

_MYSQL = ("mysql", "mariadb")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """An instant stored in UTC and always read back tz-aware in UTC, on every engine.

    PostgreSQL keeps `timestamptz`; SQLite and MySQL/MariaDB have no zone in the column, so
    values are converted to UTC before they are stored (an aware non-UTC time would otherwise
    be stored as its wall-clock time) and tagged UTC when read. MySQL gets DATETIME(6) so
    microseconds survive. A naive value is taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()
TS = UtcDateTime()
# MySQL/MariaDB: every table in utf8mb4 with binary collation whatever the database default,
# so text holds any character (emoji included) and keys compare byte for byte as they do on
# SQLite and PostgreSQL ("abc" and "ABC" are different client_msg_ids).
_TABLE_OPTIONS: dict[str, Any] = {
    f"{name}_{option}": value
    for name in _MYSQL
    for option, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}
# Message text may be max_text_bytes (64 KiB) and a system event lists up to a group's worth
# of users: more than MySQL's TEXT (65,535 bytes) holds.
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), *_MYSQL)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("username", sa.String(32), nullable=False, unique=True),
    sa.Column("display_name", sa.String(64), nullable=False),
    sa.Column("phone", sa.String(16), nullable=True, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("hide_last_seen", sa.Boolean, nullable=False, default=False),
    sa.Column("last_seen_time", TS, nullable=True),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    # An internal account (the delivery canary): never listed, never counted as the first.
    sa.Column("is_system", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("disable_time", TS, nullable=True),
    sa.Column("delete_time", TS, nullable=True),
    **_TABLE_OPTIONS,
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("last_active_time", TS, nullable=True),
    sa.Column("revoke_time", TS, nullable=True),
    sa.Column("platform", sa.String(32), nullable=False, default="", server_default=""),
    # Unset on devices from before token lifetimes: their next use sets it.
    sa.Column("expire_time", TS, nullable=True),
    **_TABLE_OPTIONS,
)

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("alias", sa.String(64), nullable=False, default=""),
    sa.Column("create_time", TS, nullable=False),
    sa.Index("ix_contacts_contact", "contact_id"),
    **_TABLE_OPTIONS,
)

threads = sa.Table(
    "threads",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("title", sa.String(128), nullable=False, default=""),
    sa.Column("last_seq", sa.BigInteger, nullable=False, default=0),
    sa.Column("direct_key", sa.String(48), nullable=True, unique=True),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    **_TABLE_OPTIONS,
)

# The seed's Thread table: one row per owner and thread, listed by update time.
thread_members = sa.Table(
    "thread_members",
    metadata,
    sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("thread_id", sa.BigInteger, sa.ForeignKey("threads.id"), primary_key=True),
    sa.Column("role", sa.SmallInteger, nullable=False),
    sa.Column("nickname", sa.String(64), nullable=False, default=""),
    sa.Column("first_seq", sa.BigInteger, nullable=False, default=1),
    sa.Column("left_seq", sa.BigInteger, nullable=True),
    sa.Column("delivered_seq", sa.BigInteger, nullable=False, default=0),
    sa.Column("read_seq", sa.BigInteger, nullable=False, default=0),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.Index("ix_thread_members_thread", "thread_id"),
    **_TABLE_OPTIONS,
)
# A column expression, not raw SQL text, so every dialect renders it (MySQL would otherwise
# take the text for a functional index).
sa.Index(
    "ix_thread_members_owner_update",
    thread_members.c.owner_id,
    thread_members.c.update_time.desc(),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("thread_id", sa.BigInteger, sa.ForeignKey("threads.id"), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("msg_id", sa.String(26), nullable=False, unique=True),
    sa.Column("sender_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("sender_device_id", sa.BigInteger, nullable=False),
    sa.Column("client_msg_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("text", LONG_TEXT, nullable=False),
    sa.Column("system", LONG_TEXT, nullable=True),
    sa.Column("create_time", TS, nullable=False),
    sa.UniqueConstraint("sender_id", "client_msg_id", name="uq_messages_sender_client"),
    **_TABLE_OPTIONS,
)

device_cursors = sa.Table(
    "device_cursors",
    metadata,
    sa.Column("device_id", sa.BigInteger, sa.ForeignKey("devices.id"), primary_key=True),
    sa.Column("thread_id", sa.BigInteger, sa.ForeignKey("threads.id"), primary_key=True),
    sa.Column("delivered_seq", sa.BigInteger, nullable=False),
    **_TABLE_OPTIONS,
)

# Who blocked whom: the blocked user cannot message, see or add the blocker.
blocks = sa.Table(
    "blocks",
    metadata,
    sa.Column("blocker_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("blocked_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("create_time", TS, nullable=False),
    sa.Index("ix_blocks_blocked", "blocked_id"),
    **_TABLE_OPTIONS,
)

reports = sa.Table(
    "reports",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("reporter_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("subject_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("thread_id", sa.BigInteger, nullable=True),
    sa.Column("reason", sa.SmallInteger, nullable=False),
    sa.Column("text", sa.String(1024), nullable=False, default=""),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("resolve_time", TS, nullable=True),
    sa.Column("resolver_id", sa.BigInteger, nullable=True),
    sa.Column("resolution", sa.String(1024), nullable=False, default=""),
    sa.Index("ix_reports_open", "resolve_time", "id"),
    **_TABLE_OPTIONS,
)

# The reported messages as they were when reported: edits and deletions do not change them.
report_messages = sa.Table(
    "report_messages",
    metadata,
    sa.Column("report_id", sa.BigInteger, sa.ForeignKey("reports.id"), primary_key=True),
    sa.Column("thread_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("msg_id", sa.String(26), nullable=False),
    sa.Column("sender_id", sa.BigInteger, nullable=False),
    sa.Column("sender_name", sa.String(64), nullable=False),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("text", LONG_TEXT, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    **_TABLE_OPTIONS,
)

# Single-use registration codes; only a hash of each is kept.
invites = sa.Table(
    "invites",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("hint", sa.String(8), nullable=False),
    sa.Column("creator_id", sa.BigInteger, nullable=True),
    sa.Column("note", sa.String(128), nullable=False, default=""),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("expire_time", TS, nullable=False),
    sa.Column("use_time", TS, nullable=True),
    sa.Column("used_by_id", sa.BigInteger, nullable=True),
    sa.Column("revoke_time", TS, nullable=True),
    **_TABLE_OPTIONS,
)

# Every admin action, by whom (an admin account, or local access to the data folder).
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("time", TS, nullable=False),
    sa.Column("actor_id", sa.BigInteger, nullable=True),
    sa.Column("actor", sa.String(96), nullable=False),
    sa.Column("action", sa.String(48), nullable=False),
    sa.Column("target", sa.String(128), nullable=False, default=""),
    sa.Column("detail", sa.String(1024), nullable=False, default=""),
    **_TABLE_OPTIONS,
)

# Server-wide values that admins change at run time (the registration policy), and markers
# such as whether the first account has been made admin.
server_config = sa.Table(
    "server_config",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    **_TABLE_OPTIONS,
)

schema_migrations = sa.Table(
    "schema_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(64), nullable=False),
    **_TABLE_OPTIONS,
)

Migration = Callable[[AsyncConnection], Awaitable[None]]


async def _initial(conn: AsyncConnection) -> None:
    await conn.run_sync(metadata.create_all)


def _add_missing(conn: Connection, table: sa.Table, names: Sequence[str]) -> None:
    """Add the columns of `table` named in `names` that the database does not have yet.

    The initial migration creates the tables as they are defined now, so on a fresh
    database a later migration finds its columns already there: each migration checks
    what exists instead of assuming what came before it (they stay correct whatever their
    number or order).
    """
    have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for name in names:
        if name in have:
            continue
        column = table.c[name]
        ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))


def _safety_and_admin(conn: Connection) -> None:
    _add_missing(conn, users, ["is_admin", "is_system", "disable_time", "delete_time"])
    _add_missing(conn, devices, ["platform", "expire_time"])
    metadata.create_all(
        conn,
        tables=[blocks, reports, report_messages, invites, audit_log, server_config],
        checkfirst=True,
    )
    # An install that already has people gets no automatic admin: its operator picks one
    # (`natter admin --data DIR users promote NAME`). A fresh one makes its first account admin.
    marker = conn.execute(
        sa.select(server_config.c.value).where(server_config.c.key == FIRST_ADMIN)
    ).first()
    people = conn.execute(
        sa.select(users.c.id).where(users.c.is_system == sa.false()).limit(1)
    ).first()
    if marker is None and people is not None:
        conn.execute(server_config.insert().values(key=FIRST_ADMIN, value="0"))


async def _safety_and_admin_async(conn: AsyncConnection) -> None:
    await conn.run_sync(_safety_and_admin)


# The server_config key that records the first account made admin ("0": none, an older
# install). Absent on a fresh install until its first registration.
FIRST_ADMIN = "first_admin"
REGISTRATION = "registration"

# Append only: a released migration is never edited; a change is a new entry. A migration
# counts as applied by its name (at most 64 characters), so entries merged from parallel
# work may be renumbered.
MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial schema", _initial),
    (2, "blocks, reports, invites, admins, audit, device expiry", _safety_and_admin_async),
]


async def migrate(conn: AsyncConnection) -> list[int]:
    """Apply pending migrations in order inside the caller's transaction; return those applied.

    A migration is pending while its name is not recorded; it is recorded under its number,
    or under the next free one if an entry with another name holds that number already.
    """
    await conn.run_sync(schema_migrations.create, checkfirst=True)
    rows = (await conn.execute(sa.select(schema_migrations))).all()
    names = {r.name for r in rows}
    used = {int(r.version) for r in rows}
    applied = []
    for version, name, step in MIGRATIONS:
        if name in names:
            continue
        await step(conn)
        number = version if version not in used else max(used) + 1
        await conn.execute(schema_migrations.insert().values(version=number, name=name))
        used.add(number)
        applied.append(number)
    return applied
