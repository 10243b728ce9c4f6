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
# Thumbnails are small JPEGs (tens of KiB), more than MySQL's BLOB (64 KiB) may hold.
BYTES = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), *_MYSQL)

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
    # natter.domain.NotificationPreview: how much push notifications show (privacy mode).
    sa.Column("notification_preview", sa.SmallInteger, nullable=False, server_default="1"),
    # The last seq of the user's own change log (user_log), bumped like threads.last_seq.
    sa.Column("log_seq", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    # An internal account (the delivery canary): never listed, never counted as the first.
    sa.Column("is_system", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("disable_time", TS, nullable=True),
    sa.Column("delete_time", TS, nullable=True),
    # The profile: a status line of at most 140 characters (560 bytes of UTF-8 fit), and
    # the picture, an image attachment of the user's (attachments.id), or none.
    sa.Column("about", sa.String(560), nullable=False, default="", server_default=""),
    sa.Column("picture_id", sa.String(26), nullable=True),
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
    # No push notifications for this member until then (natter.domain.MUTED_FOREVER: never).
    sa.Column("muted_until", TS, nullable=True),
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
    # Events (reaction, edit, delete): the seq of the message they change.
    sa.Column("target_seq", sa.BigInteger, nullable=True),
    # JSON: attachments (a snapshot of their metadata), the quoted message, the forward mark.
    sa.Column("payload", LONG_TEXT, nullable=True),
    # Folded state, kept on the message itself: the last edit, the delete for everyone.
    sa.Column("edit_seq", sa.BigInteger, nullable=True),
    sa.Column("edit_time", TS, nullable=True),
    sa.Column("delete_seq", sa.BigInteger, nullable=True),
    sa.Column("delete_time", TS, nullable=True),
    sa.UniqueConstraint("sender_id", "client_msg_id", name="uq_messages_sender_client"),
    sa.Index("ix_messages_target", "thread_id", "target_seq"),
    **_TABLE_OPTIONS,
)

# Each member's current reaction to a message (the events are in messages, kind REACTION).
reactions = sa.Table(
    "reactions",
    metadata,
    sa.Column("thread_id", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("emoji", sa.String(64), nullable=False),
    sa.Column("event_seq", sa.BigInteger, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    **_TABLE_OPTIONS,
)

# Uploaded files: metadata, owner and thumbnail; the bytes are in the blob store by sha256.
attachments = sa.Table(
    "attachments",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mime_type", sa.String(128), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("width", sa.Integer, nullable=False, default=0),
    sa.Column("height", sa.Integer, nullable=False, default=0),
    sa.Column("duration_ms", sa.BigInteger, nullable=False, default=0),
    sa.Column("blurhash", sa.String(64), nullable=False, default=""),
    sa.Column("voice_note", sa.Boolean, nullable=False, default=False),
    sa.Column("thumbnail", BYTES, nullable=True),
    sa.Column("create_time", TS, nullable=False, index=True),
    **_TABLE_OPTIONS,
)

# Which messages refer to which attachments: what a download is checked against, and what
# keeps a blob from being collected. A delete for everyone removes its message's rows.
message_attachments = sa.Table(
    "message_attachments",
    metadata,
    sa.Column("thread_id", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("position", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("attachment_id", sa.String(26), nullable=False, index=True),
    **_TABLE_OPTIONS,
)

# Stored contents, by SHA-256; touch_time starts the grace period before collection.
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("touch_time", TS, nullable=False, index=True),
    **_TABLE_OPTIONS,
)

# Delete for me: what each user hid, and their own change log that syncs it to their devices.
hidden_messages = sa.Table(
    "hidden_messages",
    metadata,
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("thread_id", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("create_time", TS, nullable=False),
    **_TABLE_OPTIONS,
)

user_log = sa.Table(
    "user_log",
    metadata,
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("thread_id", sa.BigInteger, nullable=False),
    sa.Column("target_seq", sa.BigInteger, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    **_TABLE_OPTIONS,
)

# The full-text index: SQLite FTS5 (rowid = thread_id << 32 | seq, kept by triggers),
# PostgreSQL a generated tsvector with a GIN index, MariaDB/MySQL a FULLTEXT index.
FTS_ROWID_SHIFT = 32

device_cursors = sa.Table(
    "device_cursors",
    metadata,
    sa.Column("device_id", sa.BigInteger, sa.ForeignKey("devices.id"), primary_key=True),
    sa.Column("thread_id", sa.BigInteger, sa.ForeignKey("threads.id"), primary_key=True),
    sa.Column("delivered_seq", sa.BigInteger, nullable=False),
    **_TABLE_OPTIONS,
)

# One push target per device: a Web Push subscription or a token behind a push gateway.
push_targets = sa.Table(
    "push_targets",
    metadata,
    sa.Column("device_id", sa.BigInteger, sa.ForeignKey("devices.id"), primary_key=True),
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    # The Web Push endpoint, or the gateway's notify URL.
    sa.Column("endpoint", sa.String(1024), nullable=False),
    sa.Column("p256dh", sa.String(128), nullable=False, default=""),
    sa.Column("auth", sa.String(64), nullable=False, default=""),
    sa.Column("app_id", sa.String(128), nullable=False, default=""),
    sa.Column("pushkey", sa.String(512), nullable=False, default=""),
    sa.Column("create_time", TS, nullable=False),
    **_TABLE_OPTIONS,
)

# The push queue: one row per thread per group commit (a burst), not per recipient;
# workers claim rows with a lease and delete them when done (docs/push.md).
push_jobs = sa.Table(
    "push_jobs",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("thread_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    # 0: every recipient; else a retry for this device only.
    sa.Column("device_id", sa.BigInteger, nullable=False, default=0),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # Recipients up to this user id were handled by a worker that lost the job.
    sa.Column("done_user", sa.BigInteger, nullable=False, default=0),
    sa.Column("due_time", TS, nullable=False, index=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until", TS, nullable=True),
    sa.Column("create_time", TS, nullable=False),
    **_TABLE_OPTIONS,
)

# Secrets the server makes for itself once and every process shares: the VAPID key.
server_secrets = sa.Table(
    "server_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("create_time", TS, nullable=False),
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


def _add_columns(conn: Connection, table: sa.Table, names: Sequence[str]) -> None:
    """Add columns of `table` (as `metadata` defines them) that the database lacks.

    The initial migration creates every table as it is defined now, so on a new database
    the columns are there already; an older database gets them here. Either way the
    migration does the same, whatever its number.
    """
    have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for name in names:
        if name in have:
            continue
        column = table.c[name]
        ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))


def _push_notifications(sync: Connection) -> None:
    _add_columns(sync, users, ["notification_preview"])
    _add_columns(sync, thread_members, ["muted_until"])
    for table in (push_targets, push_jobs, server_secrets):
        table.create(sync, checkfirst=True)


async def _push(conn: AsyncConnection) -> None:
    await conn.run_sync(_push_notifications)


_MESSAGE_COLUMNS = ("target_seq", "payload", "edit_seq", "edit_time", "delete_seq", "delete_time")
_NEW_TABLES = (reactions, attachments, message_attachments, blobs, hidden_messages, user_log)

_SQLITE_FTS = (
    """CREATE VIRTUAL TABLE IF NOT EXISTS message_fts USING fts5(
        text, tokenize = 'unicode61 remove_diacritics 2')""",
    # How many messages hold each indexed word: how search picks its plan (sqlstore.py).
    "CREATE VIRTUAL TABLE IF NOT EXISTS message_fts_vocab USING fts5vocab(message_fts, 'row')",
    """CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages
        WHEN new.kind IN (1, 3) AND new.text <> ''
        BEGIN
          INSERT INTO message_fts(rowid, text) VALUES ((new.thread_id << 32) | new.seq, new.text);
        END""",
    """CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF text ON messages
        WHEN new.kind IN (1, 3)
        BEGIN
          DELETE FROM message_fts WHERE rowid = (old.thread_id << 32) | old.seq;
          INSERT INTO message_fts(rowid, text)
            SELECT (new.thread_id << 32) | new.seq, new.text WHERE new.text <> '';
        END""",
    """CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages
        WHEN old.kind IN (1, 3)
        BEGIN
          DELETE FROM message_fts WHERE rowid = (old.thread_id << 32) | old.seq;
        END""",
)


def _rich_messages(sync: Any) -> None:
    """Attachments, replies, reactions, edits, deletes, delete for me, and full-text search.

    Written to hold whatever the schema already has, so it does not depend on its place in
    the list: a database created by `_initial` with this metadata already has the tables
    and columns, an older one gets them here; the search index is made here either way.
    """
    inspector = sa.inspect(sync)
    dialect = sync.dialect.name
    have = {c["name"] for c in inspector.get_columns("messages")}
    for name in _MESSAGE_COLUMNS:
        if name not in have:
            column = messages.c[name]
            kind = column.type.compile(dialect=sync.dialect)
            sync.execute(sa.text(f"ALTER TABLE messages ADD COLUMN {name} {kind} NULL"))
    if "log_seq" not in {c["name"] for c in inspector.get_columns("users")}:
        sync.execute(sa.text("ALTER TABLE users ADD COLUMN log_seq BIGINT NOT NULL DEFAULT 0"))
    if "ix_messages_target" not in {i["name"] for i in inspector.get_indexes("messages")}:
        sa.Index("ix_messages_target", messages.c.thread_id, messages.c.target_seq).create(sync)
    metadata.create_all(sync, tables=list(_NEW_TABLES), checkfirst=True)
    if dialect == "sqlite":
        fresh = not inspector.has_table("message_fts")
        for statement in _SQLITE_FTS:
            sync.execute(sa.text(statement))
        if fresh:
            sync.execute(
                sa.text(
                    "INSERT INTO message_fts(rowid, text) SELECT (thread_id << 32) | seq, text "
                    "FROM messages WHERE kind IN (1, 3) AND text <> '' AND delete_seq IS NULL"
                )
            )
    elif dialect == "postgresql":
        if "search" not in {c["name"] for c in sa.inspect(sync).get_columns("messages")}:
            sync.execute(
                sa.text(
                    "ALTER TABLE messages ADD COLUMN search tsvector "
                    "GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED"
                )
            )
        sync.execute(
            sa.text("CREATE INDEX IF NOT EXISTS ix_messages_search ON messages USING GIN (search)")
        )
    elif dialect in _MYSQL:
        indexes = {i["name"] for i in sa.inspect(sync).get_indexes("messages")}
        if "ft_messages_text" not in indexes:
            # Keys stay binary (utf8mb4_bin); the text is matched case-insensitively. Every
            # word is indexed, as on the other engines: InnoDB's stopword list ("the",
            # "about", ...) is for the index being made here only.
            sync.execute(sa.text("SET SESSION innodb_ft_enable_stopword = OFF"))
            sync.execute(
                sa.text(
                    "ALTER TABLE messages MODIFY text MEDIUMTEXT CHARACTER SET utf8mb4 "
                    "COLLATE utf8mb4_unicode_520_ci NOT NULL, "
                    "ADD FULLTEXT INDEX ft_messages_text (text)"
                )
            )


async def _rich(conn: AsyncConnection) -> None:
    await conn.run_sync(_rich_messages)


def _safety_and_admin(conn: Connection) -> None:
    _add_columns(conn, users, ["is_admin", "is_system", "disable_time", "delete_time"])
    _add_columns(conn, devices, ["platform", "expire_time"])
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


def _profiles(conn: Connection) -> None:
    _add_columns(conn, users, ["about", "picture_id"])


async def _profiles_async(conn: AsyncConnection) -> None:
    await conn.run_sync(_profiles)


# The server_config key that records the first account made admin ("0": none, an older
# install). Absent on a fresh install until its first registration.
FIRST_ADMIN = "first_admin"
REGISTRATION = "registration"

# Append only: a released migration is never edited; a change is a new entry. A migration
# counts as applied by its name (at most 64 characters), and each looks before it adds,
# so entries merged from parallel work may be renumbered.
MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial schema", _initial),
    (2, "push notifications: targets, queue, mutes, preview", _push),
    (3, "attachments, reactions, edits, deletes, hiding, search", _rich),
    (4, "blocks, reports, invites, admins, audit, device expiry", _safety_and_admin_async),
    (5, "profiles: about and picture", _profiles_async),
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
