"""The Store contract: one suite that every backend (SQLite, PostgreSQL, MariaDB) must pass.

Each engine's server starts once per test session (devtools/dbservers.py); every test gets a
fresh database with the migrations applied by `SqlStore.open()` (on PostgreSQL, a copy of a
database it migrated at the start: the same schema, a third of a second sooner). `sqlite+mongodb` is
the split store (message_svc/splitstore.py): SQLite beside the MongoDB message log on a
FerretDB server (devtools/ferretdb.py), a fresh MongoDB database with each SQL one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import pytest_asyncio
import sqlalchemy as sa

from devtools.dbservers import ENGINES, DbServer, missing, server_for
from devtools.ferretdb import FerretDbServer
from devtools.ferretdb import missing as mongo_missing
from devtools.waiting import eventually
from message_svc import schema
from message_svc.mongolog import MongoMessageLog
from message_svc.splitstore import SplitStore
from message_svc.sqlstore import SqlStore
from message_svc.store import (
    Appended,
    LogEntry,
    MemberChange,
    NewMessage,
    Refusal,
    Refused,
    UserRow,
)
from natter.domain import (
    MUTED_FOREVER,
    Attachment,
    AttachmentRecord,
    Cursor,
    DeviceAck,
    Message,
    MessageKind,
    NotificationPreview,
    PresenceUser,
    PushKind,
    PushTarget,
    Role,
    SystemEvent,
    SystemKind,
    ThreadKind,
    User,
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

# -- backends ------------------------------------------------------------------------------

SERVER_ENGINES = [e for e in ENGINES if e != "sqlite"]
SPLIT = "sqlite+mongodb"


@dataclass
class Backend:
    """Where a test's fresh database comes from (and, split, its fresh message log)."""

    engine: str
    tmp: Path
    server: DbServer | None = None
    count: int = 0
    mongo: FerretDbServer | None = None
    logs: dict[str, str] | None = None
    template: str = ""

    async def new_url(self, *, migrated: bool = False) -> str:
        """An empty database; `migrated`: one the store will find migrated, where that is quicker."""
        if migrated and self.server is not None and self.server.templates:
            if not self.template:
                self.template = "natter_migrated"
                template = SqlStore(await self.server.create_database(self.template))
                await template.open()
                await template.close()
            url = await self.server.create_database(template=self.template)
        elif self.server is not None:
            url = await self.server.create_database()
        else:
            self.count += 1
            url = f"sqlite+aiosqlite:///{self.tmp / f'natter-{self.count}.db'}"
        if self.mongo is not None:
            self.logs = self.logs or {}
            self.logs[url] = await self.mongo.create_database()
        return url

    def make(self, url: str) -> SqlStore:
        """A store on a database from new_url (split: over that database's message log)."""
        if self.logs is not None and url in self.logs:
            return SplitStore(url, MongoMessageLog(self.logs[url]))
        return SqlStore(url)


def reopen(store: SqlStore) -> SqlStore:
    """Another store on the same database (and message log) as `store`."""
    url = store.url.render_as_string(hide_password=False)
    if isinstance(store, SplitStore):
        return SplitStore(url, MongoMessageLog(store.log.url))
    return SqlStore(url)


@pytest_asyncio.fixture(scope="session", loop_scope="session", params=[*ENGINES, SPLIT])
async def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Backend]:
    engine: str = request.param
    tmp = tmp_path_factory.mktemp(engine)
    if engine == "sqlite":
        yield Backend(engine, tmp)
        return
    if engine == SPLIT:
        reason = mongo_missing("ferretdb")
        if reason is not None:
            pytest.fail(f"the store contract suite needs FerretDB: {reason}", pytrace=False)
        async with FerretDbServer() as mongo:
            yield Backend(engine, tmp, mongo=mongo)
        return
    reason = missing(engine)
    if reason is not None:
        pytest.fail(f"the store contract suite needs {engine}: {reason}", pytrace=False)
    async with server_for(engine) as server:
        yield Backend(engine, tmp, server)


@pytest_asyncio.fixture
async def store(backend: Backend) -> AsyncIterator[SqlStore]:
    s = backend.make(await backend.new_url(migrated=True))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# -- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    row: UserRow
    device_id: int

    @property
    def id(self) -> int:
        return self.row.user_id

    @property
    def user(self) -> User:
        return User(self.row.user_id, self.row.username, self.row.display_name)


_tokens = itertools.count(1)
_keys = itertools.count(1)


async def person(store: SqlStore, name: str, phone: str | None = None) -> Person:
    row = await store.create_user(name, name.title(), phone, f"hash-of-{name}")
    device = await store.create_device(row.user_id, f"{name}'s phone", f"token-{next(_tokens)}")
    return Person(row, device.device_id)


def text(thread_id: int, who: Person, body: str = "hi", key: str | None = None) -> NewMessage:
    return NewMessage(
        thread_id=thread_id,
        sender=who.user,
        sender_device_id=who.device_id,
        client_msg_id=key if key is not None else f"c-{next(_keys)}",
        kind=MessageKind.TEXT,
        text=body,
    )


def system(
    thread_id: int, who: Person, kind: SystemKind, *users: Person, title: str = ""
) -> NewMessage:
    return NewMessage(
        thread_id=thread_id,
        sender=who.user,
        sender_device_id=who.device_id,
        client_msg_id=f"sys-{next(_keys)}",
        kind=MessageKind.SYSTEM,
        text="",
        system=SystemEvent(kind, who.user, tuple(u.user for u in users), title),
    )


async def append(store: SqlStore, batch: list[NewMessage]) -> list[Appended]:
    """append_messages for senders who are members: every item must be stored (or found)."""
    result = await store.append_messages(batch)
    assert len(result) == len(batch)
    stored = [a for a in result if isinstance(a, Appended)]
    assert stored == result, f"refused: {result}"
    return stored


async def send(store: SqlStore, thread_id: int, who: Person, body: str = "hi") -> Message:
    [appended] = await append(store, [text(thread_id, who, body)])
    return appended.message


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), value


async def all_seqs(store: SqlStore, thread_id: int) -> list[int]:
    return [m.seq for m in await store.list_messages(thread_id, 0, 0, 10_000, False)]


# -- lifecycle -----------------------------------------------------------------------------


async def test_reopen_keeps_data_and_applies_no_migration_twice(store: SqlStore) -> None:
    alice = await person(store, "alice")
    again = reopen(store)
    await again.open()
    try:
        assert (await again.get_users([alice.id]))[alice.id].username == "alice"
    finally:
        await again.close()


async def test_a_store_whose_connections_are_all_busy_answers_unavailable(
    backend: Backend,
) -> None:
    """A connect storm that keeps every pooled connection busy is a retryable UNAVAILABLE."""
    import sqlalchemy as sa

    store = SqlStore(await backend.new_url(migrated=True), pool_size=1, pool_timeout=0.2)
    await store.open()
    try:
        alice = await person(store, "alice")
        assert store.engine is not None
        async with contextlib.AsyncExitStack() as held:
            while True:  # take every connection the pool will give
                try:
                    await held.enter_async_context(store.engine.connect())
                except sa.exc.TimeoutError:
                    break
            with pytest.raises(Unavailable, match="database busy"):
                await store.get_users([alice.id])
        assert (await store.get_users([alice.id]))[alice.id].username == "alice"
    finally:
        await store.close()


@pytest.mark.parametrize("backend", SERVER_ENGINES, indirect=True)
async def test_a_lost_database_is_unavailable_and_the_store_recovers(
    backend: Backend, store: SqlStore
) -> None:
    assert backend.server is not None
    alice = await person(store, "alice")
    ab = await store.direct_thread(alice.id, alice.id)
    await send(store, ab, alice, "before the crash")
    await backend.server.kill()
    try:
        with pytest.raises(Unavailable):
            await store.get_users([alice.id])
        with pytest.raises(Unavailable):
            await append(store, [text(ab, alice, "during the outage")])
    finally:
        await backend.server.start()
    # Calls fail fast until the store's probe hears the database again (PROBE_RETRY).
    await eventually(lambda: store.reachable, 10, message="the store finds the database back")
    # Acknowledged writes survived kill -9; pooled connections are replaced transparently.
    assert [m.text for m in await store.list_messages(ab, 0, 0, 10, False)] == ["before the crash"]
    after = await send(store, ab, alice, "after the restart")
    assert after.seq == 2


# -- users ---------------------------------------------------------------------------------


async def test_create_user_returns_the_stored_row(store: SqlStore) -> None:
    row = await store.create_user("alice", "Alice 🌷", "+15550001111", "argon2-hash")
    assert row.user_id > 0
    assert (row.username, row.display_name, row.phone) == ("alice", "Alice 🌷", "+15550001111")
    assert row.hide_last_seen is False and row.last_seen_time is None
    assert (await store.get_users([row.user_id])) == {row.user_id: row}


async def test_duplicate_username_is_already_exists(store: SqlStore) -> None:
    # A username that mentions "phone" must still be reported as a username clash.
    await store.create_user("iphone-fan", "Fan", "+15550001111", "h")
    with pytest.raises(AlreadyExists) as caught:
        await store.create_user("iphone-fan", "Other", "+15550002222", "h")
    assert caught.value.message.startswith("username")
    assert caught.value.reason == "ACCOUNT_EXISTS"
    assert set(await store.find_users(["iphone-fan", "+15550002222"])) == {"iphone-fan"}


async def test_duplicate_phone_is_already_exists(store: SqlStore) -> None:
    await store.create_user("alice", "Alice", "+15550001111", "h")
    with pytest.raises(AlreadyExists) as caught:
        await store.create_user("phone", "Bob", "+15550001111", "h")
    assert caught.value.message.startswith("phone number")
    assert caught.value.reason == "ACCOUNT_EXISTS"
    assert await store.find_users(["phone"]) == {}


async def test_many_users_may_have_no_phone(store: SqlStore) -> None:
    a = await store.create_user("alice", "Alice", None, "h")
    b = await store.create_user("bob", "Bob", None, "h")
    assert a.user_id != b.user_id
    assert {r.phone for r in (await store.get_users([a.user_id, b.user_id])).values()} == {None}


async def test_find_users_by_username_and_by_phone(store: SqlStore) -> None:
    alice = await store.create_user("alice", "Alice", "+15550001111", "h")
    bob = await store.create_user("bob", "Bob", None, "h")
    found = await store.find_users(["+15550001111", "bob", "nobody", "bob"])
    assert found == {"+15550001111": alice, "bob": bob}
    assert await store.find_users([]) == {}


async def test_get_users_ignores_unknown_ids(store: SqlStore) -> None:
    alice = await store.create_user("alice", "Alice", None, "h")
    assert await store.get_users([alice.user_id, alice.user_id, 999_999]) == {alice.user_id: alice}
    assert await store.get_users([]) == {}


async def test_update_user_changes_only_what_is_given(store: SqlStore) -> None:
    alice = await store.create_user("alice", "Alice", None, "h")
    await store.update_user(alice.user_id, "Alice Liddell", None)
    row = (await store.get_users([alice.user_id]))[alice.user_id]
    assert (row.display_name, row.hide_last_seen) == ("Alice Liddell", False)
    await store.update_user(alice.user_id, None, True)
    row = (await store.get_users([alice.user_id]))[alice.user_id]
    assert (row.display_name, row.hide_last_seen) == ("Alice Liddell", True)
    await store.update_user(alice.user_id, None, None)
    assert (await store.get_users([alice.user_id]))[alice.user_id] == row


async def test_set_last_seen_keeps_the_instant_in_utc_with_microseconds(store: SqlStore) -> None:
    alice = await store.create_user("alice", "Alice", None, "h")
    bob = await store.create_user("bob", "Bob", None, "h")
    seen_a = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    seen_b = datetime(2024, 5, 6, 9, 8, 9, 654321, tzinfo=timezone(timedelta(hours=2)))
    await store.set_last_seen([(alice.user_id, seen_a), (bob.user_id, seen_b)])
    rows = await store.get_users([alice.user_id, bob.user_id])
    for uid, want in ((alice.user_id, seen_a), (bob.user_id, seen_b)):
        got = rows[uid].last_seen_time
        assert_utc(got)
        assert got == want
    await store.set_last_seen([])


async def test_the_presence_view_of_users(store: SqlStore) -> None:
    """presence_svc's PresenceStore: the public user, last-seen privacy and the stored time."""
    alice = await store.create_user("alice", "Alice", "+15550001111", "h")
    bob = await store.create_user("bob", "Bob", None, "h")
    seen = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    await store.set_last_seen([(alice.user_id, seen)])
    await store.update_user(bob.user_id, None, True)
    found = await store.find_presence_users(["alice", "+15550001111", "bob", "nobody"])
    assert found == {
        "alice": PresenceUser(User(alice.user_id, "alice", "Alice"), False, seen),
        "+15550001111": PresenceUser(User(alice.user_id, "alice", "Alice"), False, seen),
        "bob": PresenceUser(User(bob.user_id, "bob", "Bob"), True, None),
    }
    by_id = await store.get_presence_users([bob.user_id, alice.user_id, 999_999])
    assert by_id == {alice.user_id: found["alice"], bob.user_id: found["bob"]}
    assert_utc(by_id[alice.user_id].last_seen_time)
    assert await store.find_presence_users([]) == {} and await store.get_presence_users([]) == {}


# -- devices -------------------------------------------------------------------------------


async def test_device_by_token_finds_the_user_and_device(store: SqlStore) -> None:
    alice = await store.create_user("alice", "Alice", "+15550001111", "h")
    device = await store.create_device(alice.user_id, "laptop", "a" * 64)
    assert device.device_id > 0 and device.user_id == alice.user_id and device.name == "laptop"
    assert_utc(device.create_time)
    assert device.last_active_time is None
    found = await store.device_by_token("a" * 64)
    assert found is not None
    user, dev = found
    assert user == alice
    assert dev == device
    assert await store.device_by_token("b" * 64) is None
    assert await store.device_by_token("A" * 64) is None


async def test_revoked_devices_stop_authenticating_and_leave_the_list(store: SqlStore) -> None:
    alice = await store.create_user("alice", "Alice", None, "h")
    phone = await store.create_device(alice.user_id, "phone", "t-phone")
    laptop = await store.create_device(alice.user_id, "laptop", "t-laptop")
    assert [d.device_id for d in await store.list_devices(alice.user_id)] == [
        phone.device_id,
        laptop.device_id,
    ]
    assert await store.revoke_device(phone.device_id) is True
    assert await store.revoke_device(phone.device_id) is False
    assert await store.revoke_device(999_999) is False
    assert await store.device_by_token("t-phone") is None
    assert await store.device_by_token("t-laptop") is not None
    assert await store.list_devices(alice.user_id) == [laptop]


async def test_touch_devices_sets_last_active_time(store: SqlStore) -> None:
    alice = await store.create_user("alice", "Alice", None, "h")
    phone = await store.create_device(alice.user_id, "phone", "t-phone")
    laptop = await store.create_device(alice.user_id, "laptop", "t-laptop")
    when = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    await store.touch_devices([phone.device_id], when)
    await store.touch_devices([], when)
    by_id = {d.device_id: d for d in await store.list_devices(alice.user_id)}
    assert by_id[phone.device_id].last_active_time == when
    assert_utc(by_id[phone.device_id].last_active_time)
    assert by_id[laptop.device_id].last_active_time is None
    assert by_id[phone.device_id].create_time == phone.create_time


# -- contacts ------------------------------------------------------------------------------


async def test_adding_a_contact_twice_updates_the_alias(store: SqlStore) -> None:
    alice = await person(store, "alice")
    bob = await person(store, "bob")
    await store.add_contact(alice.id, bob.id, "Bobby")
    await store.add_contact(alice.id, bob.id, "Robert")
    contacts = await store.list_contacts(alice.id, "", 10)
    assert [(row.username, alias) for row, alias in contacts] == [("bob", "Robert")]
    assert contacts[0][0] == bob.row
    assert await store.list_contacts(bob.id, "", 10) == []


async def test_remove_contact(store: SqlStore) -> None:
    alice = await person(store, "alice")
    bob = await person(store, "bob")
    await store.add_contact(alice.id, bob.id, "")
    assert await store.remove_contact(alice.id, bob.id) is True
    assert await store.remove_contact(alice.id, bob.id) is False
    assert await store.list_contacts(alice.id, "", 10) == []


async def test_list_contacts_pages_by_username(store: SqlStore) -> None:
    owner = await person(store, "owner")
    names = ["erin", "bob", "dave", "carol", "frank"]
    for name in names:
        await store.add_contact(owner.id, (await person(store, name)).id, name.upper())
    pages: list[list[str]] = []
    after = ""
    while True:
        page = await store.list_contacts(owner.id, after, 2)
        if not page:
            break
        pages.append([row.username for row, _ in page])
        after = page[-1][0].username
    assert pages == [["bob", "carol"], ["dave", "erin"], ["frank"]]
    assert [alias for _, alias in await store.list_contacts(owner.id, "carol", 1)] == ["DAVE"]


async def test_watchers_are_the_users_who_have_someone_as_a_contact(store: SqlStore) -> None:
    alice, bob, carol, dave = [await person(store, n) for n in ("alice", "bob", "carol", "dave")]
    await store.add_contact(bob.id, alice.id, "")
    await store.add_contact(carol.id, alice.id, "")
    await store.add_contact(alice.id, bob.id, "")
    got = await store.watchers([alice.id, bob.id, dave.id])
    assert {k: sorted(v) for k, v in got.items()} == {
        alice.id: sorted([bob.id, carol.id]),
        bob.id: [alice.id],
    }
    assert await store.watchers([]) == {}


async def test_contacts_among_are_the_owners_contacts_only(store: SqlStore) -> None:
    alice, bob, carol, dave = [await person(store, n) for n in ("alice", "bob", "carol", "dave")]
    await store.add_contact(alice.id, bob.id, "")
    await store.add_contact(alice.id, carol.id, "")
    await store.add_contact(dave.id, alice.id, "")  # dave has alice; not the other way round
    assert await store.contacts_among(alice.id, [bob.id, dave.id, bob.id]) == {bob.id}
    assert await store.contacts_among(alice.id, []) == set()
    assert await store.contacts_among(bob.id, [alice.id, carol.id]) == set()


async def test_thread_peers_among_counts_only_threads_both_are_still_in(store: SqlStore) -> None:
    alice, bob, carol, dave, erin = [
        await person(store, n) for n in ("alice", "bob", "carol", "dave", "erin")
    ]
    ab = await store.direct_thread(alice.id, bob.id)
    await send(store, ab, alice)
    group, _ = await store.create_group(
        "g", alice.id, [carol.id, dave.id], system(0, alice, SystemKind.GROUP_CREATED, carol, dave)
    )
    await store.change_group(
        group,
        [MemberChange(dave.id, leave=True)],
        None,
        system(group, dave, SystemKind.MEMBER_LEFT),
    )
    everyone = [bob.id, carol.id, dave.id, erin.id]
    assert await store.thread_peers_among(alice.id, everyone) == {bob.id, carol.id}
    assert await store.thread_peers_among(dave.id, [alice.id, carol.id]) == set()


async def test_small_thread_peers_skip_threads_above_the_size(store: SqlStore) -> None:
    alice, bob, carol, dave = [await person(store, n) for n in ("alice", "bob", "carol", "dave")]
    await store.direct_thread(alice.id, bob.id)
    await store.create_group(
        "big",
        alice.id,
        [carol.id, dave.id],
        system(0, alice, SystemKind.GROUP_CREATED, carol, dave),
    )
    assert await store.small_thread_peers([alice.id], 2) == {alice.id: {bob.id}}
    got = await store.small_thread_peers([alice.id, carol.id], 3)
    assert got == {alice.id: {bob.id, carol.id, dave.id}, carol.id: {alice.id, dave.id}}
    assert await store.small_thread_peers([], 10) == {}


# -- threads -------------------------------------------------------------------------------


async def test_direct_thread_is_one_per_pair_in_either_order(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    assert await store.direct_thread(bob.id, alice.id) == ab
    ac = await store.direct_thread(carol.id, alice.id)
    assert ac != ab
    thread = await store.get_thread(ab)
    assert thread is not None
    assert (thread.thread_id, thread.kind, thread.title, thread.last_seq) == (
        ab,
        ThreadKind.DIRECT,
        "",
        0,
    )
    assert_utc(thread.update_time)
    members = await store.list_members(ab)
    assert sorted(m.user_id for m in members) == sorted([alice.id, bob.id])
    for m in members:
        assert (m.role, m.first_seq, m.left_seq, m.delivered_seq, m.read_seq) == (
            Role.MEMBER,
            1,
            None,
            0,
            0,
        )
        assert m.active


async def test_a_note_to_self_thread_has_one_member(store: SqlStore) -> None:
    alice = await person(store, "alice")
    mine = await store.direct_thread(alice.id, alice.id)
    assert await store.active_member_ids(mine) == [alice.id]
    [summary] = await store.list_threads(alice.id, None, 10)
    assert (summary.peer_id, summary.member_count) == (alice.id, 1)


async def test_concurrent_direct_thread_calls_make_one_thread(store: SqlStore) -> None:
    alice = await person(store, "alice")
    bob = await person(store, "bob")
    ids = await asyncio.gather(
        *(
            store.direct_thread(*((alice.id, bob.id) if i % 2 else (bob.id, alice.id)))
            for i in range(12)
        )
    )
    assert len(set(ids)) == 1
    assert sorted(await store.active_member_ids(ids[0])) == sorted([alice.id, bob.id])
    assert len(await store.user_threads(alice.id)) == 1


async def test_unknown_threads_and_members_are_none(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    assert await store.get_thread(999_999) is None
    assert await store.get_member(ab, carol.id) is None
    assert await store.get_member(999_999, alice.id) is None
    member = await store.get_member(ab, alice.id)
    assert member is not None and (member.thread_id, member.user_id) == (ab, alice.id)
    assert_utc(member.create_time)
    assert_utc(member.update_time)
    assert await store.list_members(999_999) == []
    assert await store.active_member_ids(999_999) == []


async def test_user_groups_are_the_groups_still_joined(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    await store.direct_thread(alice.id, bob.id)
    kept, _ = await store.create_group(
        "kept", alice.id, [bob.id], system(0, alice, SystemKind.GROUP_CREATED, bob)
    )
    left, _ = await store.create_group(
        "left", bob.id, [alice.id], system(0, bob, SystemKind.GROUP_CREATED, alice)
    )
    await store.change_group(
        left,
        [MemberChange(alice.id, leave=True)],
        None,
        system(left, alice, SystemKind.MEMBER_LEFT),
    )
    assert await store.user_groups(alice.id) == [kept]
    assert await store.user_groups(bob.id) == sorted([kept, left])
    assert await store.user_groups(999_999) == []


async def test_user_threads_lists_every_membership(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    group, _ = await store.create_group(
        "g", carol.id, [alice.id], system(0, carol, SystemKind.GROUP_CREATED, alice)
    )
    rows = await store.user_threads(alice.id)
    assert sorted(r.thread_id for r in rows) == sorted([ab, group])
    assert all(r.user_id == alice.id for r in rows)
    assert [r.thread_id for r in await store.user_threads(bob.id)] == [ab]
    assert await store.user_threads(999_999) == []


async def test_list_threads_newest_first_with_paging(store: SqlStore) -> None:
    alice = await person(store, "alice")
    others = [await person(store, n) for n in ("bob", "carol", "dave", "erin")]
    threads = [await store.direct_thread(alice.id, o.id) for o in others]
    for thread_id, who in zip(threads, others, strict=True):
        await send(store, thread_id, who)
    # The oldest conversation comes back to life: it moves to the top.
    await send(store, threads[0], alice)
    want = [threads[0], threads[3], threads[2], threads[1]]

    everything = await store.list_threads(alice.id, None, 10)
    assert [s.thread.thread_id for s in everything] == want
    times = [s.member.update_time for s in everything]
    assert times == sorted(times, reverse=True)
    for s in everything:
        assert_utc(s.member.update_time)
        assert_utc(s.thread.update_time)

    seen: list[int] = []
    before: tuple[datetime, int] | None = None
    while True:
        page = await store.list_threads(alice.id, before, 3)
        if not page:
            break
        seen += [s.thread.thread_id for s in page]
        before = (page[-1].member.update_time, page[-1].thread.thread_id)
    assert seen == want


async def test_list_threads_breaks_update_time_ties_by_thread_id(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    first = await store.direct_thread(alice.id, bob.id)
    second = await store.direct_thread(alice.id, carol.id)
    # One batch touches both threads with the same time.
    await append(store, [text(first, alice), text(second, alice)])
    page = await store.list_threads(alice.id, None, 1)
    assert [s.thread.thread_id for s in page] == [max(first, second)]
    assert (
        page[0].member.update_time
        == (await store.list_threads(alice.id, None, 2))[1].member.update_time
    )
    rest = await store.list_threads(
        alice.id, (page[0].member.update_time, page[0].thread.thread_id), 5
    )
    assert [s.thread.thread_id for s in rest] == [min(first, second)]


async def test_list_threads_counts_unread_and_shows_the_last_message(store: SqlStore) -> None:
    alice = await person(store, "alice")
    bob = await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    [empty] = await store.list_threads(alice.id, None, 10)
    assert (empty.last_message, empty.unread_count, empty.peer_id, empty.member_count) == (
        None,
        0,
        bob.id,
        2,
    )
    for body in ("one", "two", "three"):
        await send(store, ab, bob, body)
    mine = await send(store, ab, alice, "four")
    [summary] = await store.list_threads(alice.id, None, 10)
    assert summary.unread_count == 3  # one's own messages are never unread
    assert summary.last_message == mine
    assert summary.thread.last_seq == 4
    assert summary.peer_id == bob.id
    [theirs] = await store.list_threads(bob.id, None, 10)
    assert (theirs.unread_count, theirs.peer_id) == (1, alice.id)
    assert await store.advance_read(alice.id, ab, 2) is True
    [summary] = await store.list_threads(alice.id, None, 10)
    assert (summary.unread_count, summary.member.read_seq) == (1, 2)


# -- groups --------------------------------------------------------------------------------


async def test_create_group_stores_members_and_the_first_system_message(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    event = system(0, alice, SystemKind.GROUP_CREATED, bob, carol, title="Climbing 🧗")
    group, message = await store.create_group(
        "Climbing 🧗", alice.id, [bob.id, carol.id, alice.id, bob.id], event
    )
    assert (message.thread_id, message.seq, message.kind) == (group, 1, MessageKind.SYSTEM)
    assert message.system == event.system
    thread = await store.get_thread(group)
    assert thread is not None
    assert (thread.kind, thread.title, thread.last_seq) == (ThreadKind.GROUP, "Climbing 🧗", 1)
    members = {m.user_id: m for m in await store.list_members(group)}
    assert set(members) == {alice.id, bob.id, carol.id}
    assert members[alice.id].role is Role.ADMIN
    assert members[bob.id].role is Role.MEMBER and members[carol.id].role is Role.MEMBER
    assert all(m.first_seq == 1 and m.left_seq is None for m in members.values())
    [stored] = await store.list_messages(group, 0, 0, 10, False)
    assert stored == message
    [summary] = await store.list_threads(bob.id, None, 10)
    assert (summary.peer_id, summary.member_count, summary.unread_count) == (None, 3, 1)


async def test_change_group_joins_leaves_and_roles_with_the_next_seq(store: SqlStore) -> None:
    alice, bob, carol, dave = [await person(store, n) for n in ("alice", "bob", "carol", "dave")]
    group, _ = await store.create_group(
        "g", alice.id, [bob.id], system(0, alice, SystemKind.GROUP_CREATED, bob)
    )
    await send(store, group, bob, "before carol")  # seq 2

    joined = await store.change_group(
        group,
        [MemberChange(carol.id, join=True), MemberChange(dave.id, join=True, full_history=True)],
        None,
        system(group, alice, SystemKind.MEMBERS_ADDED, carol, dave),
    )
    assert (joined.seq, joined.kind) == (3, MessageKind.SYSTEM)
    assert joined.system is not None and joined.system.kind is SystemKind.MEMBERS_ADDED
    carol_row = await store.get_member(group, carol.id)
    dave_row = await store.get_member(group, dave.id)
    assert carol_row is not None and dave_row is not None
    assert (carol_row.first_seq, carol_row.left_seq, carol_row.role) == (3, None, Role.MEMBER)
    assert not carol_row.visible(2) and carol_row.visible(3)
    assert dave_row.first_seq == 1 and dave_row.visible(1)

    promoted = await store.change_group(
        group,
        [MemberChange(bob.id, role=Role.ADMIN)],
        None,
        system(group, alice, SystemKind.ADMINS_PROMOTED, bob),
    )
    assert promoted.seq == 4
    bob_row = await store.get_member(group, bob.id)
    assert bob_row is not None and bob_row.role is Role.ADMIN

    left = await store.change_group(
        group,
        [MemberChange(carol.id, leave=True)],
        None,
        system(group, carol, SystemKind.MEMBER_LEFT),
    )
    assert left.seq == 5
    carol_row = await store.get_member(group, carol.id)
    assert carol_row is not None
    assert (carol_row.left_seq, carol_row.active) == (5, False)
    assert carol_row.visible(5) and not carol_row.visible(6)
    assert sorted(await store.active_member_ids(group)) == sorted([alice.id, bob.id, dave.id])

    after = await send(store, group, bob, "after carol left")
    assert after.seq == 6
    [summary] = await store.list_threads(carol.id, None, 10)
    assert summary.last_message == left  # what carol saw last, not what came after
    assert summary.unread_count == 2  # seqs 3 and 4; 5 is her own, 6 came after she left
    assert summary.member_count == 3

    retitled = await store.change_group(
        group, [], "New title", system(group, alice, SystemKind.TITLE_CHANGED, title="New title")
    )
    assert retitled.seq == 7
    thread = await store.get_thread(group)
    assert thread is not None and (thread.title, thread.last_seq) == ("New title", 7)

    back = await store.change_group(
        group,
        [MemberChange(carol.id, join=True)],
        None,
        system(group, alice, SystemKind.MEMBERS_ADDED, carol),
    )
    carol_row = await store.get_member(group, carol.id)
    assert carol_row is not None
    assert (carol_row.first_seq, carol_row.left_seq) == (back.seq, None)
    assert await all_seqs(store, group) == [1, 2, 3, 4, 5, 6, 7, 8]


async def test_change_group_of_an_unknown_thread_is_not_found(store: SqlStore) -> None:
    alice = await person(store, "alice")
    with pytest.raises(NotFound):
        await store.change_group(
            999_999, [], "t", system(999_999, alice, SystemKind.TITLE_CHANGED, title="t")
        )


async def test_change_group_keeps_an_admin_and_the_cap_and_writes_nothing_when_refused(
    store: SqlStore,
) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    group, _ = await store.create_group(
        "g", alice.id, [bob.id], system(0, alice, SystemKind.GROUP_CREATED, bob)
    )
    with pytest.raises(FailedPrecondition, match="needs an admin"):
        await store.change_group(
            group,
            [MemberChange(alice.id, role=Role.MEMBER)],
            None,
            system(group, alice, SystemKind.ADMINS_DEMOTED, alice),
        )
    with pytest.raises(ResourceExhausted, match="at most 2 members"):
        await store.change_group(
            group,
            [MemberChange(carol.id, join=True)],
            None,
            system(group, alice, SystemKind.MEMBERS_ADDED, carol),
            max_members=2,
        )
    thread = await store.get_thread(group)
    assert thread is not None and thread.last_seq == 1
    assert await all_seqs(store, group) == [1]
    assert sorted(await store.active_member_ids(group)) == sorted([alice.id, bob.id])
    me = await store.get_member(group, alice.id)
    assert me is not None and me.role is Role.ADMIN
    # Joining someone who is already a member changes nothing about them.
    await store.change_group(
        group,
        [MemberChange(bob.id, role=Role.ADMIN)],
        None,
        system(group, alice, SystemKind.ADMINS_PROMOTED, bob),
    )
    again = await store.change_group(
        group,
        [MemberChange(bob.id, join=True)],
        None,
        system(group, alice, SystemKind.MEMBERS_ADDED, bob),
    )
    bob_row = await store.get_member(group, bob.id)
    assert bob_row is not None and bob_row.role is Role.ADMIN and bob_row.first_seq == 1
    assert again.seq == 3


async def test_concurrent_changes_from_two_processes_leave_an_admin(
    store: SqlStore,
) -> None:
    """Two admins demote each other through two stores (two message_svc processes)."""
    alice, bob = [await person(store, n) for n in ("alice", "bob")]
    group, _ = await store.create_group(
        "g", alice.id, [bob.id], system(0, alice, SystemKind.GROUP_CREATED, bob)
    )
    await store.change_group(
        group,
        [MemberChange(bob.id, role=Role.ADMIN)],
        None,
        system(group, alice, SystemKind.ADMINS_PROMOTED, bob),
    )
    other = reopen(store)
    await other.open()
    try:
        for _ in range(5):
            results = await asyncio.gather(
                store.change_group(
                    group,
                    [MemberChange(bob.id, role=Role.MEMBER)],
                    None,
                    system(group, alice, SystemKind.ADMINS_DEMOTED, bob),
                ),
                other.change_group(
                    group,
                    [MemberChange(alice.id, role=Role.MEMBER)],
                    None,
                    system(group, bob, SystemKind.ADMINS_DEMOTED, alice),
                ),
                return_exceptions=True,
            )
            refused = [r for r in results if isinstance(r, FailedPrecondition)]
            assert len(refused) == 1, results
            admins = [m for m in await store.list_members(group) if m.role is Role.ADMIN]
            assert len(admins) == 1
            # Put both back to admin for the next round.
            demoted = alice if admins[0].user_id == bob.id else bob
            await store.change_group(
                group,
                [MemberChange(demoted.id, role=Role.ADMIN)],
                None,
                system(group, alice, SystemKind.ADMINS_PROMOTED, demoted),
            )
    finally:
        await other.close()


async def test_list_members_in_join_order(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    group, _ = await store.create_group(
        "g", alice.id, [bob.id], system(0, alice, SystemKind.GROUP_CREATED, bob)
    )
    await store.change_group(
        group,
        [MemberChange(carol.id, join=True)],
        None,
        system(group, alice, SystemKind.MEMBERS_ADDED, carol),
    )
    order = [m.user_id for m in await store.list_members(group)]
    assert order == [*sorted([alice.id, bob.id]), carol.id]


# -- messages ------------------------------------------------------------------------------


async def test_append_assigns_gapless_seqs_per_thread_across_a_batch(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    ac = await store.direct_thread(alice.id, carol.id)
    await send(store, ab, alice, "earlier")
    batch = [
        text(ab, alice, "a1"),
        text(ac, alice, "c1"),
        text(ab, bob, "a2"),
        text(ac, carol, "c2"),
        text(ab, alice, "a3"),
    ]
    result = await append(store, batch)
    assert [(a.message.thread_id, a.message.seq, a.message.text) for a in result] == [
        (ab, 2, "a1"),
        (ac, 1, "c1"),
        (ab, 3, "a2"),
        (ac, 2, "c2"),
        (ab, 4, "a3"),
    ]
    assert not any(a.duplicate for a in result)
    assert len({a.message.msg_id for a in result}) == 5
    for a, n in zip(result, batch, strict=True):
        assert (a.message.sender, a.message.sender_device_id, a.message.client_msg_id) == (
            n.sender,
            n.sender_device_id,
            n.client_msg_id,
        )
        assert_utc(a.message.create_time)
    stored = await store.list_messages(ab, 0, 0, 10, False)
    assert stored[1:] == [a.message for a in result if a.message.thread_id == ab]
    for thread_id, last in ((ab, 4), (ac, 2)):
        thread = await store.get_thread(thread_id)
        assert thread is not None and thread.last_seq == last


async def test_a_batch_larger_than_one_insert_is_stored_whole_and_in_order(
    store: SqlStore,
) -> None:
    """150 messages over three threads (SQLite writes them in several multi-row INSERTs)."""
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    ac = await store.direct_thread(alice.id, carol.id)
    bc = await store.direct_thread(bob.id, carol.id)
    [kept] = await append(store, [text(ab, alice, "stored before", key="k-early")])
    threads = [(ab, alice), (ac, carol), (bc, bob)]
    batch = [
        text(tid, who, f"bulk word{i} " + "é🌷" * (i % 3))
        for i in range(150)
        for tid, who in [threads[i % 3]]
    ]
    batch[70] = text(ab, alice, "stored before (retry)", key="k-early")  # a retry in the batch
    result = await append(store, batch)
    assert result[70].duplicate is True and result[70].message == kept.message
    fresh = [a for i, a in enumerate(result) if i != 70]
    assert not any(a.duplicate for a in fresh)
    assert len({a.message.msg_id for a in result}) == 150
    for tid, _ in threads:
        mine = [a.message for a in fresh if a.message.thread_id == tid]
        first = 2 if tid == ab else 1
        assert [m.seq for m in mine] == list(range(first, first + len(mine)))
        assert await store.list_messages(tid, first - 1, 0, 200, False) == mine
        thread = await store.get_thread(tid)
        assert thread is not None and thread.last_seq == mine[-1].seq
    for a in fresh:
        assert_utc(a.message.create_time)
    found = await store.search_messages(carol.id, ["word148"], 0, 0, 10)
    assert [(m.thread_id, m.text) for m in found] == [(batch[148].thread_id, batch[148].text)]


async def test_a_repeated_client_msg_id_returns_the_original(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    [first] = await append(store, [text(ab, alice, "hello", key="k-1")])
    again = await append(
        store, [text(ab, alice, "hello (retry)", key="k-1"), text(ab, alice, "next", key="k-2")]
    )
    assert again[0].duplicate is True
    assert again[0].message == first.message
    assert (again[1].duplicate, again[1].message.seq) == (False, 2)
    assert [m.text for m in await store.list_messages(ab, 0, 0, 10, False)] == ["hello", "next"]
    thread = await store.get_thread(ab)
    assert thread is not None and thread.last_seq == 2


async def test_a_key_twice_in_one_batch_is_stored_once(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    result = await append(
        store,
        [
            text(ab, alice, "x", key="same"),
            text(ab, bob, "y", key="same"),
            text(ab, alice, "x again", key="same"),
        ],
    )
    assert [a.duplicate for a in result] == [False, False, True]
    assert result[2].message == result[0].message
    assert [m.text for m in await store.list_messages(ab, 0, 0, 10, False)] == ["x", "y"]


async def test_client_msg_ids_are_case_sensitive(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    result = await append(store, [text(ab, alice, "lower", key="abc")])
    result += await append(store, [text(ab, alice, "upper", key="ABC")])
    assert [(a.duplicate, a.message.text) for a in result] == [(False, "lower"), (False, "upper")]
    assert await all_seqs(store, ab) == [1, 2]


async def test_append_refuses_senders_who_are_not_active_members(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    group, _ = await store.create_group(
        "g", alice.id, [carol.id], system(0, alice, SystemKind.GROUP_CREATED, carol)
    )
    await store.change_group(
        group,
        [MemberChange(carol.id, leave=True)],
        None,
        system(group, carol, SystemKind.MEMBER_LEFT),
    )
    result = await store.append_messages(
        [text(999_999, alice), text(ab, carol), text(ab, bob, "ok"), text(group, carol)]
    )
    assert result[0] == Refused(999_999)
    assert result[1] == Refused(ab)
    assert isinstance(result[2], Appended) and result[2].message.seq == 1
    assert result[3] == Refused(group)
    assert await all_seqs(store, ab) == [1]
    assert await all_seqs(store, group) == [1, 2]


async def test_concurrent_appends_never_share_a_seq(store: SqlStore) -> None:
    people = [await person(store, n) for n in ("alice", "bob", "carol")]
    group, _ = await store.create_group(
        "g",
        people[0].id,
        [p.id for p in people],
        system(0, people[0], SystemKind.GROUP_CREATED, *people[1:]),
    )
    direct = await store.direct_thread(people[0].id, people[1].id)
    batches = [
        [text(group if (b + i) % 2 else direct, people[(b + i) % 2]) for i in range(4)]
        for b in range(24)
    ]
    results = await asyncio.gather(*(append(store, b) for b in batches))
    appended = [a for r in results for a in r]
    assert not any(a.duplicate for a in appended)
    per_thread = {
        tid: sorted(a.message.seq for a in appended if a.message.thread_id == tid)
        for tid in (group, direct)
    }
    assert per_thread[group] == list(range(2, 2 + len(per_thread[group])))
    assert per_thread[direct] == list(range(1, 1 + len(per_thread[direct])))
    assert len(per_thread[group]) + len(per_thread[direct]) == 24 * 4
    assert await all_seqs(store, group) == [1, *per_thread[group]]
    assert await all_seqs(store, direct) == per_thread[direct]


async def test_concurrent_retries_of_one_send_store_it_once(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    results = await asyncio.gather(
        *(append(store, [text(ab, alice, "once", key="retry-me")]) for _ in range(10))
    )
    appended = [r[0] for r in results]
    assert sum(not a.duplicate for a in appended) == 1
    assert len({a.message for a in appended}) == 1
    assert await all_seqs(store, ab) == [1]


async def test_list_messages_after_before_and_newest(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    await append(store, [text(ab, alice, f"m{i}") for i in range(1, 11)])

    async def seqs(after: int, before: int, limit: int, newest: bool) -> list[int]:
        return [m.seq for m in await store.list_messages(ab, after, before, limit, newest)]

    assert await seqs(0, 0, 3, False) == [1, 2, 3]
    assert await seqs(0, 0, 3, True) == [8, 9, 10]
    assert await seqs(3, 7, 10, False) == [4, 5, 6]
    assert await seqs(0, 7, 2, True) == [5, 6]
    assert await seqs(3, 7, 2, True) == [5, 6]
    assert await seqs(8, 0, 10, False) == [9, 10]
    assert await seqs(10, 0, 10, False) == []
    assert await store.list_messages(999_999, 0, 0, 10, False) == []


async def test_messages_after_reads_ranges_up_to_a_limit(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    ac = await store.direct_thread(alice.id, carol.id)
    await append(store, [text(ab, bob, f"b{i}") for i in range(6)])
    await append(store, [text(ac, carol, f"c{i}") for i in range(3)])

    async def pairs(ranges: list[tuple[int, int, int]], limit: int) -> list[tuple[int, int]]:
        return [(m.thread_id, m.seq) for m in await store.messages_after(ranges, limit)]

    assert await pairs([(ab, 2, 5), (ac, 0, 1)], 10) == [(ab, 3), (ab, 4), (ab, 5), (ac, 1)]
    assert await pairs([(ab, 2, 5), (ac, 0, 1)], 2) == [(ab, 3), (ab, 4)]
    assert await pairs([(ab, 2, 5), (ac, 0, 3)], 5) == [(ab, 3), (ab, 4), (ab, 5), (ac, 1), (ac, 2)]
    assert await pairs([(ab, 6, 100)], 10) == []
    assert await pairs([], 10) == []
    # Threads with nothing new, and unknown ones, are skipped, not read.
    assert await pairs([(ab, 6, 100), (999_999, 0, 100), (ac, 2, 100)], 10) == [(ac, 3)]


async def test_messages_round_trip_exactly(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    longest = "😀" * (64 * 1024 // 4)  # the default max_text_bytes, all in 4-byte characters
    bodies = ["plain", "multi\nline \u2018quotes\u2019 \\ % _ ' \"", "中文 עברית 🏳️‍🌈", longest]
    sent = [a.message for a in await append(store, [text(ab, alice, b) for b in bodies])]
    stored = await store.list_messages(ab, 0, 0, 10, False)
    assert stored == sent
    assert [m.text for m in stored] == bodies
    for m in stored:
        assert_utc(m.create_time)
        assert m.create_time == sent[0].create_time  # one batch, one time, microseconds kept
    assert await store.messages_after([(ab, 0, 10)], 10) == sent


# -- cursors -------------------------------------------------------------------------------


async def test_advance_delivered_reports_member_advances_only_when_they_move(
    store: SqlStore,
) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    laptop = (await store.create_device(bob.id, "laptop", "bob-laptop")).device_id
    ab = await store.direct_thread(alice.id, bob.id)
    await append(store, [text(ab, alice, f"m{i}") for i in range(5)])
    assert await store.device_cursors(bob.device_id) == {}

    def ack(device_id: int, seq: int) -> DeviceAck:
        return DeviceAck(bob.id, device_id, (Cursor(ab, seq),))

    first = await store.advance_delivered([ack(bob.device_id, 3)])
    assert [(a.thread_id, a.user_id, a.seq) for a in first] == [(ab, bob.id, 3)]
    assert await store.device_cursors(bob.device_id) == {ab: 3}
    # Another device catching up to less than the member already has: no member advance.
    assert await store.advance_delivered([ack(laptop, 2)]) == []
    assert await store.device_cursors(laptop) == {ab: 2}
    # The same ack again, or an older one, changes nothing.
    assert await store.advance_delivered([ack(bob.device_id, 3)]) == []
    assert await store.advance_delivered([ack(bob.device_id, 1)]) == []
    assert await store.device_cursors(bob.device_id) == {ab: 3}
    # Moving the laptop past the member's cursor moves the member.
    moved = await store.advance_delivered([ack(laptop, 5)])
    assert [(a.thread_id, a.user_id, a.seq) for a in moved] == [(ab, bob.id, 5)]
    member = await store.get_member(ab, bob.id)
    assert member is not None and member.delivered_seq == 5
    assert await store.advance_delivered([]) == []


async def test_advance_delivered_clamps_to_what_the_member_may_see(store: SqlStore) -> None:
    alice, bob, carol, dave = [await person(store, n) for n in ("alice", "bob", "carol", "dave")]
    ab = await store.direct_thread(alice.id, bob.id)
    await append(store, [text(ab, alice, f"m{i}") for i in range(3)])  # seqs 1-3
    group, _ = await store.create_group(
        "g", alice.id, [carol.id], system(0, alice, SystemKind.GROUP_CREATED, carol)
    )
    await send(store, group, alice, "before")  # seq 2
    left = await store.change_group(
        group,
        [MemberChange(carol.id, leave=True)],
        None,
        system(group, carol, SystemKind.MEMBER_LEFT),
    )
    await send(store, group, alice, "after carol left")  # seq 4
    moved = await store.advance_delivered(
        [
            DeviceAck(bob.id, bob.device_id, (Cursor(ab, 99),)),  # past the thread's last
            DeviceAck(carol.id, carol.device_id, (Cursor(group, 99),)),  # past her leaving
            # dave was never in either thread: his cursors are dropped.
            DeviceAck(dave.id, dave.device_id, (Cursor(ab, 2), Cursor(group, 1))),
        ]
    )
    assert sorted((a.thread_id, a.user_id, a.seq) for a in moved) == sorted(
        [(ab, bob.id, 3), (group, carol.id, left.seq)]
    )
    assert await store.device_cursors(bob.device_id) == {ab: 3}
    assert await store.device_cursors(carol.device_id) == {group: left.seq}
    assert await store.device_cursors(dave.device_id) == {}
    member = await store.get_member(ab, bob.id)
    assert member is not None and member.delivered_seq == 3
    assert await store.get_member(ab, dave.id) is None
    # The thread grows; the next ack moves the cursor on, clamped again.
    await send(store, ab, alice)  # seq 4
    moved = await store.advance_delivered([DeviceAck(bob.id, bob.device_id, (Cursor(ab, 99),))])
    assert [(a.thread_id, a.user_id, a.seq) for a in moved] == [(ab, bob.id, 4)]
    assert await store.device_cursors(bob.device_id) == {ab: 4}


async def test_advance_delivered_handles_many_threads_and_devices(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    ac = await store.direct_thread(alice.id, carol.id)
    await append(store, [text(ab, bob), text(ab, bob), text(ac, carol)])
    advanced = await store.advance_delivered(
        [
            DeviceAck(alice.id, alice.device_id, (Cursor(ab, 2), Cursor(ac, 1))),
            DeviceAck(carol.id, carol.device_id, (Cursor(ac, 1),)),
        ]
    )
    assert sorted((a.thread_id, a.user_id, a.seq) for a in advanced) == sorted(
        [(ab, alice.id, 2), (ac, alice.id, 1), (ac, carol.id, 1)]
    )
    assert await store.device_cursors(alice.device_id) == {ab: 2, ac: 1}


async def test_advance_read_never_moves_backwards(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    await append(store, [text(ab, alice, f"m{i}") for i in range(6)])
    assert await store.advance_read(bob.id, ab, 4) is True
    member = await store.get_member(ab, bob.id)
    assert member is not None
    assert (member.read_seq, member.delivered_seq) == (4, 4)  # read implies delivered
    assert await store.advance_read(bob.id, ab, 4) is False
    assert await store.advance_read(bob.id, ab, 2) is False
    member = await store.get_member(ab, bob.id)
    assert member is not None and member.read_seq == 4
    await store.advance_delivered([DeviceAck(bob.id, bob.device_id, (Cursor(ab, 6),))])
    assert await store.advance_read(bob.id, ab, 5) is True
    member = await store.get_member(ab, bob.id)
    assert member is not None
    assert (member.read_seq, member.delivered_seq) == (5, 6)  # delivered never goes back
    assert await store.advance_read(bob.id, 999_999, 1) is False


# -- push notifications ----------------------------------------------------------------------


def pushed_text(thread_id: int, who: Person, body: str = "hi") -> NewMessage:
    return replace(text(thread_id, who, body), notify=True)


async def reachable(store: SqlStore, who: Person) -> Person:
    """Give a person's device a push target: only then are their threads' pushes queued."""
    target = PushTarget(who.device_id, who.id, PushKind.WEB_PUSH, "https://p.test/x", "k", "a")
    await store.set_push_target(target)
    return who


async def test_a_commit_queues_one_push_job_per_thread_for_marked_messages_only(
    store: SqlStore,
) -> None:
    alice, bob, carol, dave = [await person(store, n) for n in ("alice", "bob", "carol", "dave")]
    await reachable(store, bob)
    await reachable(store, carol)
    ab = await store.direct_thread(alice.id, bob.id)
    ac = await store.direct_thread(alice.id, carol.id)
    ad = await store.direct_thread(alice.id, dave.id)
    await append(store, [text(ab, alice, "not marked")])
    await append(store, [pushed_text(ad, alice, "nobody there has a push target")])
    assert await store.push_jobs() == []
    batch = [
        pushed_text(ab, alice),
        text(ab, alice),
        pushed_text(ab, alice),
        pushed_text(ac, alice),
    ]
    await append(store, batch)
    jobs = sorted(await store.push_jobs(), key=lambda j: j.thread_id)
    assert [(j.thread_id, j.first_seq, j.last_seq) for j in jobs] == [(ab, 2, 4), (ac, 1, 1)]
    assert all(j.device_id == 0 and j.attempts == 0 and not j.lease_owner for j in jobs)


async def test_push_claims_are_exclusive_fenced_and_taken_over_after_the_lease(
    backend: Backend,
) -> None:
    url = await backend.new_url()
    one, two = backend.make(url), backend.make(url)
    await one.open()
    await two.open()
    try:
        alice = await person(one, "alice")
        bob = await person(one, "bob")
        others = [await reachable(one, await person(one, f"u{i}")) for i in range(6)]
        threads = [await one.direct_thread(alice.id, o.id) for o in others]
        for tid in threads:
            await append(one, [pushed_text(tid, alice)])
        assert await one.claim_push_jobs("w1", 3600, 60, 10) == [], "not due in the grace period"
        a, b = await asyncio.gather(
            one.claim_push_jobs("w1", 0, 60, 3), two.claim_push_jobs("w2", 0, 60, 3)
        )
        got_a, got_b = {j.job_id for j in a}, {j.job_id for j in b}
        # Disjoint; on SQLite the later claim may find what it read already taken.
        assert (got_a or got_b) and not got_a & got_b, "no job held by two workers"
        rest = await one.claim_push_jobs("w1", 0, 60, 10)
        assert len(got_a | got_b | {j.job_id for j in rest}) == 6
        assert await one.claim_push_jobs("w1", 0, 60, 10) == [], "everything is leased"
        got_a |= {j.job_id for j in rest}
        await two.finish_push_jobs(list(got_b), "w2")
        got_b = set()
        # Fencing: only the holder renews or finishes.
        assert not await two.renew_push_jobs(list(got_a), "w2", 60, 0)
        assert await one.renew_push_jobs(list(got_a), "w1", 60, bob.id)
        await two.finish_push_jobs(list(got_a), "w2")
        assert len(await one.push_jobs()) == len(got_a)
        # A lease that runs out (its worker died) is taken over, with the progress made.
        assert await one.renew_push_jobs(list(got_a), "w1", -1, bob.id)
        taken = await two.claim_push_jobs("w2", 0, 60, 10)
        assert {j.job_id for j in taken} == got_a
        assert all(j.done_user == bob.id and j.lease_owner == "w2" for j in taken)
        await two.finish_push_jobs(list(got_a), "w2")
        assert await one.push_jobs() == []
    finally:
        await one.close()
        await two.close()


async def test_a_claim_takes_the_whole_burst_of_a_thread(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await reachable(store, await person(store, "bob"))
    tid = await store.direct_thread(alice.id, bob.id)
    await append(store, [pushed_text(tid, alice)])
    first = (await store.push_jobs())[0]
    await asyncio.sleep(0.05)  # the second commit must be younger than the claim's horizon
    await append(store, [pushed_text(tid, alice)])
    age = (datetime.now(UTC) - first.create_time).total_seconds()
    claimed = await store.claim_push_jobs("w", age / 2, 60, 10)
    assert len(claimed) == 2, "the younger job of the same thread comes along"
    assert {(j.first_seq, j.last_seq) for j in claimed} == {(1, 1), (2, 2)}


async def test_push_retries_are_queued_for_their_time(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await reachable(store, await person(store, "bob"))
    tid = await store.direct_thread(alice.id, bob.id)
    await append(store, [pushed_text(tid, alice)])
    [job] = await store.claim_push_jobs("w", 0, 60, 10)
    later = datetime.now(UTC) + timedelta(hours=1)
    await store.retry_pushes([(replace(job, device_id=bob.device_id, attempts=1), later)])
    await store.finish_push_jobs([job.job_id], "w")
    assert await store.claim_push_jobs("w", 0, 60, 10) == [], "not before its time"
    await store.retry_pushes(
        [(replace(job, device_id=bob.device_id, attempts=2), datetime.now(UTC))]
    )
    [retry] = await store.claim_push_jobs("w", 0, 60, 10)
    assert (retry.device_id, retry.attempts) == (bob.device_id, 2)


async def test_push_targets_replace_delete_by_endpoint_and_go_with_the_device(
    store: SqlStore,
) -> None:
    bob = await person(store, "bob")
    web = PushTarget(bob.device_id, bob.id, PushKind.WEB_PUSH, "https://p.test/a", "k", "s")
    stored = await store.set_push_target(web)
    assert_utc(stored.create_time)
    assert await store.get_push_target(bob.device_id) == replace(
        web, create_time=stored.create_time
    )
    gw = PushTarget(
        bob.device_id, bob.id, PushKind.GATEWAY, "https://gw.test", app_id="a", pushkey="t"
    )
    await store.set_push_target(gw)
    assert [t.kind for t in await store.push_targets([bob.id])] == [PushKind.GATEWAY]
    assert not await store.delete_push_target(bob.device_id, endpoint="https://p.test/a")
    assert await store.get_push_target(bob.device_id) is not None, "a newer target is kept"
    await store.revoke_device(bob.device_id)
    assert await store.get_push_target(bob.device_id) is None
    with pytest.raises(NotFound):
        await store.set_push_target(web)


async def test_mutes_and_privacy_mode_reach_the_push_context(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    tid = await store.direct_thread(alice.id, bob.id)
    await append(store, [pushed_text(tid, alice, "one"), pushed_text(tid, alice, "two")])
    until = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert await store.set_mute(bob.id, tid, until)
    assert not await store.set_mute(bob.id, tid + 99, until)
    await store.update_user(bob.id, None, None, NotificationPreview.HIDDEN)
    member = await store.get_member(tid, bob.id)
    assert member is not None and member.muted_until == until
    [summary] = await store.list_threads(bob.id, None, 10)
    assert summary.member.muted_until == until
    ctx = (await store.push_contexts([(tid, 1, 2)]))[tid]
    assert [m.text for m in ctx.messages] == ["one", "two"] and ctx.kind is ThreadKind.DIRECT
    by_user = {r.user_id: r for r in ctx.recipients}
    assert by_user[bob.id].muted_until == until
    assert by_user[bob.id].preview is NotificationPreview.HIDDEN
    assert by_user[alice.id].preview is NotificationPreview.FULL
    await store.set_mute(bob.id, tid, MUTED_FOREVER)
    assert (await store.get_member(tid, bob.id)).muted_until == MUTED_FOREVER  # type: ignore[union-attr]
    await store.set_mute(bob.id, tid, None)
    assert (await store.get_member(tid, bob.id)).muted_until is None  # type: ignore[union-attr]


async def test_a_server_secret_is_made_once_whoever_asks_first(backend: Backend) -> None:
    url = await backend.new_url()
    stores = [backend.make(url) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        made = itertools.count()
        values = await asyncio.gather(
            *(s.server_secret("k", lambda: f"v{next(made)}") for s in stores)
        )
        assert len(set(values)) == 1
        assert await stores[0].server_secret("k", lambda: "other") == values[0]
    finally:
        for s in stores:
            await s.close()


async def test_the_push_migration_is_idempotent(store: SqlStore) -> None:
    assert store.engine is not None
    async with store.engine.begin() as conn:
        await schema._push(conn)  # a database that has it already: nothing changes
    assert await store.push_jobs() == []


# -- rich messages: attachments, replies, forwards, and the events that change messages -----


def change(
    thread_id: int, who: Person, kind: MessageKind, target: int, body: str = "", **kw: object
) -> NewMessage:
    return NewMessage(
        thread_id=thread_id,
        sender=who.user,
        sender_device_id=who.device_id,
        client_msg_id=f"e-{next(_keys)}",
        kind=kind,
        text=body,
        target_seq=target,
        **kw,  # type: ignore[arg-type]
    )


async def outcome(store: SqlStore, new: NewMessage) -> Appended | Refused:
    [result] = await store.append_messages([new])
    return result


async def upload(
    store: SqlStore, owner: Person, sha: str = "ab" * 32, name: str = "p.jpg"
) -> Attachment:
    a = Attachment(
        attachment_id=f"A{next(_keys):025d}",
        mime_type="image/jpeg",
        size=1234,
        name=name,
        sha256=sha,
        width=40,
        height=30,
        blurhash="LEHV6nWB2yk8pyo0adR*.7kCMdnj",
        has_thumbnail=True,
    )
    await store.add_attachment(AttachmentRecord(a, owner.id, datetime.now(UTC)), b"\xff\xd8thumb")
    return a


async def test_events_fold_onto_their_messages(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    first = await send(store, ab, alice, "helo")
    await append(
        store,
        [
            change(ab, bob, MessageKind.REACTION, first.seq, "👍"),
            change(ab, alice, MessageKind.REACTION, first.seq, "😂"),
            change(ab, bob, MessageKind.REACTION, first.seq, "🎉"),
            change(ab, alice, MessageKind.EDIT, first.seq, "hello"),
            change(ab, alice, MessageKind.REACTION, first.seq, ""),
        ],
    )
    [folded] = await store.list_messages(ab, 0, 0, 10, False, folded=True)
    assert (folded.text, folded.edit_seq, folded.deleted) == ("hello", 5, False)
    assert folded.edit_time is not None
    assert [(r.user.username, r.emoji, r.seq) for r in folded.reactions] == [("bob", "🎉", 4)]
    raw = await store.list_messages(ab, 0, 0, 10, False)
    assert [(m.kind, m.target_seq, m.emoji, m.text) for m in raw[1:]] == [
        (MessageKind.REACTION, 1, "👍", ""),
        (MessageKind.REACTION, 1, "😂", ""),
        (MessageKind.REACTION, 1, "🎉", ""),
        (MessageKind.EDIT, 1, "", "hello"),
        (MessageKind.REACTION, 1, "", ""),
    ]
    # A delete removes the text everywhere it was (edits too) and the reactions.
    await append(store, [change(ab, alice, MessageKind.DELETE, first.seq)])
    rows = await store.list_messages(ab, 0, 0, 10, False)
    assert (rows[0].text, rows[0].deleted, rows[0].delete_seq, rows[0].reactions) == (
        "",
        True,
        7,
        (),
    )
    assert rows[4].text == ""
    assert await store.messages_after([(ab, 0, 10)], 10) == rows


async def test_events_are_checked_in_the_appending_transaction(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    first = await send(store, ab, alice, "one")
    later = datetime.now(UTC) + timedelta(hours=1)

    async def refused(new: NewMessage) -> Refusal:
        result = await outcome(store, new)
        assert isinstance(result, Refused), result
        return result.reason

    assert await refused(change(ab, bob, MessageKind.EDIT, first.seq, "x")) is Refusal.NOT_AUTHOR
    assert await refused(change(ab, bob, MessageKind.DELETE, first.seq)) is Refusal.NOT_AUTHOR
    assert await refused(change(ab, alice, MessageKind.EDIT, 99, "x")) is Refusal.MESSAGE_NOT_FOUND
    assert (
        await refused(change(ab, alice, MessageKind.EDIT, first.seq, "x", deadline=later))
        is Refusal.WINDOW_CLOSED
    )
    assert (
        await refused(change(ab, carol, MessageKind.REACTION, first.seq, "👍"))
        is Refusal.NOT_A_MEMBER
    )
    # A delete and an edit of the same message in one batch: the edit comes too late.
    results = await store.append_messages(
        [
            change(ab, alice, MessageKind.DELETE, first.seq),
            change(ab, alice, MessageKind.EDIT, first.seq, "edited"),
        ]
    )
    assert isinstance(results[0], Appended)
    assert isinstance(results[1], Refused) and results[1].reason is Refusal.MESSAGE_DELETED
    assert (
        await refused(change(ab, bob, MessageKind.REACTION, first.seq, "👍"))
        is Refusal.MESSAGE_DELETED
    )
    # Group admins delete anything; events are not what one reacts to or edits.
    g, created = await store.create_group(
        "g", alice.id, [bob.id], system(0, alice, SystemKind.GROUP_CREATED, title="g")
    )
    bobs = await send(store, g, bob, "spam")
    assert isinstance(
        await outcome(store, change(g, alice, MessageKind.DELETE, bobs.seq, deadline=later)),
        Appended,
    )
    assert (
        await refused(change(g, bob, MessageKind.REACTION, created.seq, "👍"))
        is Refusal.NOT_EDITABLE
    )


async def test_replies_forwards_and_attachments(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    photo = await upload(store, alice)
    [sent] = await append(
        store,
        [
            NewMessage(
                ab,
                alice.user,
                alice.device_id,
                "c-photo",
                MessageKind.ATTACHMENT,
                "",
                attachment_ids=(photo.attachment_id,),
            )
        ],
    )
    assert sent.message.attachments == (photo,)
    assert await store.may_read_attachment(bob.id, photo.attachment_id)
    assert not await store.may_read_attachment(carol.id, photo.attachment_id)
    # Someone else's upload cannot be sent; it can be forwarded from a thread one sees.
    stolen = NewMessage(
        ab,
        bob.user,
        bob.device_id,
        "c-x",
        MessageKind.ATTACHMENT,
        "",
        attachment_ids=(photo.attachment_id,),
    )
    result = await outcome(store, stolen)
    assert isinstance(result, Refused) and result.reason is Refusal.ATTACHMENT_NOT_FOUND
    reply = replace(text(ab, bob, "nice"), reply_to_seq=sent.message.seq)
    [r] = await append(store, [reply])
    assert r.message.reply_to is not None and r.message.reply_to.snippet == "p.jpg"
    bc = await store.direct_thread(bob.id, carol.id)
    fwd = replace(text(bc, bob, ""), forward=(ab, sent.message.seq))
    [f] = await append(store, [fwd])
    assert (f.message.forwarded, f.message.attachments, f.message.kind) == (
        True,
        (photo,),
        MessageKind.ATTACHMENT,
    )
    assert await store.may_read_attachment(carol.id, photo.attachment_id)
    ac = await store.direct_thread(alice.id, carol.id)
    sneaky = replace(text(ac, carol, ""), forward=(ab, sent.message.seq))
    result = await outcome(store, sneaky)
    assert isinstance(result, Refused) and result.reason is Refusal.FORWARD_NOT_VISIBLE
    # Deleting the original drops its reference; the forward still refers to the upload.
    await append(store, [change(ab, alice, MessageKind.DELETE, sent.message.seq)])
    [gone] = await store.list_messages(ab, 0, 2, 10, False)
    assert (gone.attachments, gone.deleted) == ((), True)
    assert await store.may_read_attachment(carol.id, photo.attachment_id)


async def test_previews_and_unread_counts_skip_events(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    one = await send(store, ab, alice, "one")
    two = await send(store, ab, alice, "two")
    await append(
        store,
        [
            change(ab, bob, MessageKind.REACTION, one.seq, "👍"),
            change(ab, alice, MessageKind.EDIT, two.seq, "two!"),
        ],
    )
    [mine] = await store.list_threads(bob.id, None, 10)
    assert mine.last_message is not None and (mine.last_message.seq, mine.last_message.text) == (
        2,
        "two!",
    )
    assert mine.unread_count == 2
    [theirs] = await store.list_threads(alice.id, None, 10)
    assert theirs.unread_count == 0


@pytest.mark.parametrize("plan", ["chosen", "thread by thread"])
async def test_search_finds_visible_messages_by_words_and_prefixes(
    store: SqlStore, plan: str
) -> None:
    if plan != "chosen":
        store.per_thread_matches = 0  # SQLite: as for common words in a large store
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    m1 = await send(store, ab, alice, "Pancakes for breakfast tomorrow")
    m2 = await send(store, ab, bob, "breakfast sounds great")
    m3 = await send(store, ab, bob, "café crème after the pancakes")
    deleted = await send(store, ab, alice, "pancakes are a lie")
    await append(store, [change(ab, alice, MessageKind.DELETE, deleted.seq)])
    hidden = await send(store, ab, alice, "pancakes again")
    await store.hide_messages(bob.id, ab, [hidden.seq])
    bc = await store.direct_thread(bob.id, carol.id)
    m6 = await send(store, bc, carol, "breakfast with carol")
    edited = await send(store, bc, carol, "lunch maybe")
    await append(store, [change(bc, carol, MessageKind.EDIT, edited.seq, "brunch pancakes maybe")])

    async def found(user: Person, *words: str, thread: int = 0) -> set[tuple[int, int]]:
        rows = await store.search_messages(user.id, list(words), thread, 0, 100)
        return {(m.thread_id, m.seq) for m in rows}

    assert await found(alice, "pancakes") == {(ab, m1.seq), (ab, m3.seq), (ab, hidden.seq)}
    assert await found(bob, "pancakes") == {(ab, m1.seq), (ab, m3.seq), (bc, edited.seq)}
    assert await found(bob, "breakfast") == {(ab, m1.seq), (ab, m2.seq), (bc, m6.seq)}
    assert await found(bob, "breakfast", thread=bc) == {(bc, m6.seq)}
    assert await found(alice, "pancakes", "breakfast") == {(ab, m1.seq)}  # every word
    assert await found(alice, "break") == {(ab, m1.seq), (ab, m2.seq)}  # a word's start
    assert await found(alice, "PANCAKES") == await found(alice, "pancakes")
    assert await found(carol, "pancakes") == {(bc, edited.seq)}
    assert await found(carol, "lunch") == set()  # the edit replaced it
    assert await found(alice, "zucchini") == set()
    assert await found(bob, "the") == {(ab, m3.seq)}  # no stopwords on any engine
    # Pages: offset and limit over the same ranking cover every hit once.
    pages = [await store.search_messages(bob.id, ["breakfast"], 0, k, 1) for k in range(4)]
    assert sorted((p[0].thread_id, p[0].seq) for p in pages if p) == sorted(
        await found(bob, "breakfast")
    )
    assert pages[3] == []


@pytest.mark.parametrize("plan", ["chosen", "thread by thread"])
async def test_search_stops_where_a_member_left_and_starts_where_they_joined(
    store: SqlStore, plan: str
) -> None:
    if plan != "chosen":
        store.per_thread_matches = 0  # SQLite: as for common words in a large store
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    g, _ = await store.create_group(
        "g", alice.id, [bob.id], system(0, alice, SystemKind.GROUP_CREATED)
    )
    early = await send(store, g, alice, "tangerine one")
    await store.change_group(
        g,
        [MemberChange(carol.id, join=True)],
        None,
        system(g, alice, SystemKind.MEMBERS_ADDED, carol),
    )
    mid = await send(store, g, alice, "tangerine two")
    await store.change_group(
        g,
        [MemberChange(bob.id, leave=True)],
        None,
        system(g, alice, SystemKind.MEMBERS_REMOVED, bob),
    )
    late = await send(store, g, alice, "tangerine three")
    by = {
        p.row.username: {
            (m.seq) for m in await store.search_messages(p.id, ["tangerine"], 0, 0, 10)
        }
        for p in (alice, bob, carol)
    }
    assert by == {
        "alice": {early.seq, mid.seq, late.seq},
        "bob": {early.seq, mid.seq},
        "carol": {mid.seq, late.seq},
    }


async def test_hidden_messages_are_a_per_user_log(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    m1, m2 = await send(store, ab, alice, "a"), await send(store, ab, bob, "b")
    first = await store.hide_messages(alice.id, ab, [m1.seq, m2.seq, m1.seq])
    assert [(c.seq, c.kind, c.message) for c in first] == [
        (1, UserChangeKind.HIDE_MESSAGE, Cursor(ab, m1.seq)),
        (2, UserChangeKind.HIDE_MESSAGE, Cursor(ab, m2.seq)),
    ]
    assert await store.hide_messages(alice.id, ab, [m2.seq]) == []
    assert await store.user_changes(alice.id, 1, 10) == first[1:]
    assert await store.user_changes(bob.id, 0, 10) == []
    rows = await store.list_messages(ab, 0, 0, 10, False, viewer=alice.id)
    assert [(m.hidden, m.text) for m in rows] == [(True, ""), (True, "")]
    assert [m.hidden for m in await store.list_messages(ab, 0, 0, 10, False, viewer=bob.id)] == [
        False,
        False,
    ]


async def test_unreferenced_blobs_are_collected_after_the_grace(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    sent = await upload(store, alice, "11" * 32)
    unsent = await upload(store, alice, "22" * 32)
    await append(
        store,
        [
            NewMessage(
                ab,
                alice.user,
                alice.device_id,
                "c-s",
                MessageKind.ATTACHMENT,
                "",
                attachment_ids=(sent.attachment_id,),
            )
        ],
    )
    now = datetime.now(UTC)
    assert await store.collectable_blobs(now + timedelta(seconds=1), 10) == []
    assert await store.drop_unsent_attachments(now - timedelta(hours=1)) == 0  # in its grace
    assert await store.drop_unsent_attachments(now + timedelta(seconds=1)) == 1
    assert await store.get_attachment(unsent.attachment_id) is None
    assert await store.collectable_blobs(now - timedelta(hours=1), 10) == []
    assert await store.collectable_blobs(now + timedelta(seconds=1), 10) == ["22" * 32]
    deleted: list[str] = []

    async def delete() -> None:
        deleted.append("22" * 32)

    assert await store.collect_blob("22" * 32, now + timedelta(seconds=1), delete)
    assert deleted == ["22" * 32]
    assert not await store.collect_blob("22" * 32, now + timedelta(seconds=1), delete)
    assert not await store.collect_blob("11" * 32, now + timedelta(seconds=1), delete)  # referenced
    assert await store.attachment_thumbnail(sent.attachment_id) == b"\xff\xd8thumb"


async def test_the_rich_messages_migration_holds_whatever_its_place(store: SqlStore) -> None:
    # Run again on a database that has it: nothing changes, nothing fails (it may be
    # renumbered among migrations written in parallel, and so run on any schema state).
    alice = await person(store, "alice")
    ab = await store.direct_thread(alice.id, alice.id)
    await send(store, ab, alice, "kept through the migration")
    assert store.engine is not None
    async with store.engine.begin() as conn:
        await conn.run_sync(schema._rich_messages)
    assert [m.text for m in await store.list_messages(ab, 0, 0, 10, False)] == [
        "kept through the migration"
    ]
    rows = await store.search_messages(alice.id, ["migration"], 0, 0, 10)
    assert [m.text for m in rows] == ["kept through the migration"]


async def test_a_direct_send_is_checked_in_one_statement_of_its_transaction(
    store: SqlStore,
) -> None:
    """Membership, blocks and push targets are one statement (they were three round trips).

    Counted at the driver: the checks, the seq bump (a locking read and an UPDATE where the
    engine has no UPDATE ... RETURNING), the insert, the members' rows; BEGIN and COMMIT
    around them. Every statement is a round trip on a database server.
    """
    if isinstance(store, SplitStore):
        pytest.skip("the split store appends through its message log, not this transaction")
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)

    def direct() -> NewMessage:
        return replace(text(ab, alice), peer_id=bob.id, notify=True)

    await append(store, [direct()])  # connections made, statements compiled
    statements: list[str] = []

    def seen(*args: object) -> None:
        statements.append(str(args[2]))

    assert store.engine is not None
    engines = {store.engine.sync_engine, getattr(store, "_sync_engine", None)} - {None}
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        [appended] = await append(store, [direct()])
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", seen)
    assert appended.message.seq == 2
    bump = 1 if store.engine.dialect.update_returning else 2
    assert len(statements) == 3 + bump, statements


# -- safety, administration, device limits ------------------------------------------------


async def test_direct_sends_are_refused_when_blocked_either_way_or_the_peer_is_deleted(
    store: SqlStore,
) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    ab = await store.direct_thread(alice.id, bob.id)
    ac = await store.direct_thread(alice.id, carol.id)

    def direct(thread: int, who: Person, peer: Person) -> NewMessage:
        return replace(text(thread, who), peer_id=peer.id)

    assert await store.block(bob.id, alice.id) is True
    assert await store.block(bob.id, alice.id) is False  # already
    out = await store.append_messages(
        [direct(ab, alice, bob), direct(ab, bob, alice), direct(ac, alice, carol)]
    )
    assert isinstance(out[0], Refused) and out[0].reason is Refusal.BLOCKED_BY_PEER
    assert isinstance(out[1], Refused) and out[1].reason is Refusal.BLOCKING_PEER
    assert isinstance(out[2], Appended) and out[2].message.seq == 1  # others unaffected
    thread = await store.get_thread(ab)
    assert thread is not None and thread.last_seq == 0  # nothing stored, no seq used
    assert await store.unblock(bob.id, alice.id) is True
    assert await store.unblock(bob.id, alice.id) is False
    [ok] = await store.append_messages([direct(ab, alice, bob)])
    assert isinstance(ok, Appended) and ok.message.seq == 1
    await store.erase_user(carol.id)
    [gone] = await store.append_messages([direct(ac, alice, carol)])
    assert isinstance(gone, Refused) and gone.reason is Refusal.PEER_DELETED


async def test_blocks_are_listed_and_linked_both_ways(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    await store.block(alice.id, carol.id)
    await store.block(alice.id, bob.id)
    await store.block(carol.id, bob.id)
    assert [r.username for r in await store.list_blocked(alice.id, "", 10)] == ["bob", "carol"]
    assert [r.username for r in await store.list_blocked(alice.id, "bob", 10)] == ["carol"]
    assert await store.blocked_by(bob.id, [alice.id, carol.id]) == {alice.id, carol.id}
    assert await store.blocked_by(alice.id, [bob.id, carol.id]) == set()
    links = await store.block_links([alice.id, bob.id])
    assert links == {alice.id: {bob.id, carol.id}, bob.id: {alice.id, carol.id}}


async def test_mutual_contacts(store: SqlStore) -> None:
    alice, bob, carol = [await person(store, n) for n in ("alice", "bob", "carol")]
    await store.add_contact(alice.id, bob.id, "")
    await store.add_contact(bob.id, alice.id, "")
    await store.add_contact(alice.id, carol.id, "")  # one-sided
    assert await store.mutual_contacts([alice.id, carol.id]) == {alice.id: {bob.id}}
    assert await store.mutual_contacts_among(alice.id, [bob.id, carol.id]) == {bob.id}


async def test_the_first_account_becomes_admin_once_and_invites_are_used_up(
    store: SqlStore,
) -> None:
    system = await store.create_user("~system", "System", None, "!", is_system=True)
    assert not system.is_admin  # a system account never counts as the first
    first = await store.create_user("alice", "Alice", None, "h", first_becomes_admin=True)
    second = await store.create_user("bob", "Bob", None, "h", first_becomes_admin=True)
    assert (first.is_admin, second.is_admin) == (True, False)
    assert (await store.get_users([first.user_id]))[first.user_id].is_admin
    later = datetime.now(UTC) + timedelta(hours=1)
    await store.create_invite("hash-1", "abcdef", first.user_id, "for carol", later)
    carol = await store.create_user("carol", "Carol", None, "h", invite_hash="hash-1")
    with pytest.raises(PermissionDenied) as info:
        await store.create_user("dave", "Dave", None, "h", invite_hash="hash-1")
    assert info.value.reason == "BAD_INVITE"
    with pytest.raises(PermissionDenied):
        await store.create_user("dave", "Dave", None, "h", invite_hash="no-such-code")
    await store.create_invite("hash-2", "ghijkl", None, "", datetime.now(UTC) - timedelta(1))
    with pytest.raises(PermissionDenied):  # expired
        await store.create_user("dave", "Dave", None, "h", invite_hash="hash-2")
    await store.create_invite("hash-3", "mnopqr", None, "", later)
    assert await store.revoke_invite("mnopqr") is True
    with pytest.raises(PermissionDenied):  # revoked
        await store.create_user("dave", "Dave", None, "h", invite_hash="hash-3")
    # A clash on the username leaves the invite unused.
    await store.create_invite("hash-4", "stuvwx", None, "", later)
    with pytest.raises(AlreadyExists):
        await store.create_user("carol", "Carol", None, "h", invite_hash="hash-4")
    await store.create_user("erin", "Erin", None, "h", invite_hash="hash-4")
    open_ = await store.list_invites(include_done=False)
    assert open_ == []
    done = {i.hint: i for i in await store.list_invites(include_done=True)}
    assert done["abcdef"].used_by_id == carol.user_id and done["mnopqr"].revoke_time


async def test_concurrent_first_registrations_make_one_admin(store: SqlStore) -> None:
    rows = await asyncio.gather(
        *(
            store.create_user(f"user{i}", f"U{i}", None, "h", first_becomes_admin=True)
            for i in range(6)
        )
    )
    assert sum(r.is_admin for r in rows) == 1


async def test_device_cap_is_checked_in_the_transaction_and_can_replace_the_oldest(
    store: SqlStore,
) -> None:
    from message_svc.store import NewDevice

    alice = await store.create_user("alice", "Alice", None, "h")
    far = datetime.now(UTC) + timedelta(days=1)

    def device(name: str, replace_oldest: bool = False) -> NewDevice:
        return NewDevice(alice.user_id, name, f"tok-{name}", "cli", far, 2, replace_oldest)

    first = await store.add_device(device("one"))
    await store.add_device(device("two"))
    with pytest.raises(ResourceExhausted) as info:
        await store.add_device(device("three"))
    assert info.value.reason == "TOO_MANY_DEVICES"
    added = await store.add_device(device("three", replace_oldest=True))
    assert added.replaced == (first.device.device_id,)
    names = [d.name for d in await store.list_devices(alice.user_id)]
    assert names == ["two", "three"]
    assert (await store.list_devices(alice.user_id))[0].platform == "cli"
    # Expired devices do not count against the cap.
    stale = NewDevice(alice.user_id, "old", "tok-old", "", datetime.now(UTC) - timedelta(1), 9)
    await store.add_device(stale)
    await store.revoke_devices(alice.user_id, None, keep=added.device.device_id)
    await store.add_device(device("four"))
    assert {d.name for d in await store.list_devices(alice.user_id)} >= {"three", "four"}


async def test_renew_devices_skips_revoked_expired_disabled_and_deleted(store: SqlStore) -> None:
    from message_svc.store import NewDevice

    now = datetime.now(UTC)
    alice = await store.create_user("alice", "Alice", None, "h")
    bob = await store.create_user("bob", "Bob", None, "h")
    later, past = now + timedelta(days=1), now - timedelta(seconds=1)
    live = (await store.add_device(NewDevice(alice.user_id, "a", "t1", "", later, 9))).device
    lapsed = (await store.add_device(NewDevice(alice.user_id, "b", "t2", "", past, 9))).device
    revoked = (await store.add_device(NewDevice(alice.user_id, "c", "t3", "", later, 9))).device
    of_bob = (await store.add_device(NewDevice(bob.user_id, "d", "t4", "", later, 9))).device
    await store.revoke_devices(alice.user_id, [revoked.device_id])
    ids = [live.device_id, lapsed.device_id, revoked.device_id, of_bob.device_id]
    until = now + timedelta(days=7)
    assert await store.renew_devices(ids, now, until) == {live.device_id, of_bob.device_id}
    [row] = [r for r in await store.list_devices(alice.user_id) if r.device_id == live.device_id]
    assert row.expire_time is not None and abs(row.expire_time - until) < timedelta(seconds=1)
    assert await store.set_disabled(bob.user_id, True) is True
    assert await store.set_disabled(bob.user_id, True) is False
    assert await store.renew_devices(ids, now, until) == {live.device_id}
    assert await store.set_disabled(bob.user_id, False) is True
    assert await store.renew_devices([of_bob.device_id], now, until) == {of_bob.device_id}


async def test_erasing_a_user_keeps_their_messages_and_removes_the_rest(store: SqlStore) -> None:
    alice, bob = await person(store, "alice", "+4915100000001"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    await append(store, [text(ab, alice, "kept")])
    await store.add_contact(alice.id, bob.id, "")
    await store.add_contact(bob.id, alice.id, "")
    await store.block(alice.id, bob.id)
    await store.advance_delivered([DeviceAck(alice.id, alice.device_id, (Cursor(ab, 1),))])
    assert await store.erase_user(alice.id) == [alice.device_id]
    row = (await store.get_users([alice.id]))[alice.id]
    assert row.deleted and row.display_name == "Deleted account" and row.phone is None
    assert row.username == f"~deleted-{alice.id}"
    assert await store.find_users(["alice", "+4915100000001"]) == {}
    [kept] = await store.list_messages(ab, 0, 0, 10, False)
    assert (kept.text, kept.sender.display_name) == ("kept", "Deleted account")
    assert await store.list_contacts(bob.id, "", 10) == []
    assert await store.block_links([bob.id]) == {}
    assert await store.device_cursors(alice.device_id) == {}
    assert await store.list_devices(alice.id) == []
    # The name is free again.
    await store.create_user("alice", "Another Alice", None, "h")


async def test_reports_keep_copies_and_resolve_once(store: SqlStore) -> None:
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    sent = await append(store, [text(ab, bob, "nasty"), text(ab, bob, "worse")])
    first = await store.create_report(
        alice.id, bob.id, ab, 2, "he is rude", [a.message for a in sent]
    )
    second = await store.create_report(bob.id, alice.id, 0, 1, "", [])
    listed = await store.list_reports(True, 0, 10)
    assert [r.report_id for r in listed] == [first, second]
    report = await store.get_report(first)
    assert report is not None
    assert (report.reporter.username, report.subject.username, report.reason) == ("alice", "bob", 2)
    assert [m.text for m in report.messages] == ["nasty", "worse"]
    assert report.messages[0].sender.display_name == "Bob"
    assert await store.resolve_report(first, alice.id, "warned him") is True
    assert await store.resolve_report(first, alice.id, "again") is False
    assert [r.report_id for r in await store.list_reports(True, 0, 10)] == [second]
    assert [r.report_id for r in await store.list_reports(False, first, 10)] == [second]
    done = await store.get_report(first)
    assert done is not None and done.resolution == "warned him" and done.resolve_time
    assert await store.get_report(999_999) is None


async def test_config_audit_and_account_listing(store: SqlStore) -> None:
    assert await store.get_config("registration") is None
    await store.set_config("registration", "invite")
    await store.set_config("registration", "closed")
    assert await store.get_config("registration") == "closed"
    await store.set_config("registration", None)
    assert await store.get_config("registration") is None
    for i in range(3):
        await store.audit(None, "local:root", f"act.{i}", "bob", "detail")
    entries = await store.list_audit(0, 2)
    assert [e.action for e in entries] == ["act.2", "act.1"]
    older = await store.list_audit(entries[-1].entry_id, 10)
    assert [e.action for e in older] == ["act.0"] and older[0].actor == "local:root"
    await store.create_user("~sys", "System", None, "!", is_system=True)
    alice = await store.create_user("alice", "Alice Liddell", "+4915100000002", "h")
    await store.create_user("bob", "Bob", None, "h")
    assert [r.username for r in await store.list_users("", 0, 10)] == ["alice", "bob"]
    assert [r.username for r in await store.list_users("liddell", 0, 10)] == ["alice"]
    assert [r.username for r in await store.list_users("+49151", 0, 10)] == ["alice"]
    assert [r.username for r in await store.list_users("", alice.user_id, 10)] == ["bob"]
    assert await store.set_admin(alice.user_id, True) is True
    assert await store.set_admin(alice.user_id, True) is False


async def test_migrating_an_older_database_adds_the_new_columns_and_names_no_admin(
    backend: Backend,
) -> None:
    """A database made before blocks and admins existed: their migration upgrades it in place."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from message_svc import schema

    new_columns = {
        "users": {"is_admin", "is_system", "disable_time", "delete_time", "about", "picture_id"},
        "devices": {"platform", "expire_time"},
    }
    old = sa.MetaData()
    for table in (schema.users, schema.devices):
        sa.Table(
            table.name,
            old,
            *(c._copy() for c in table.c if c.name not in new_columns[table.name]),
            **table.kwargs,
        )
    url = await backend.new_url()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(old.create_all)
            others = [t for t in schema.metadata.sorted_tables if t.name not in new_columns]
            await conn.run_sync(lambda c: schema.metadata.create_all(c, tables=others))
            await conn.run_sync(schema.schema_migrations.create)
            await conn.execute(
                schema.schema_migrations.insert().values(version=1, name="initial schema")
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO users (username, display_name, password_hash, hide_last_seen,"
                    " create_time) VALUES ('alice', 'Alice', 'h', false, CURRENT_TIMESTAMP)"
                )
            )
    finally:
        await engine.dispose()
    upgraded = SqlStore(url)
    await upgraded.open()
    try:
        [alice] = (await upgraded.find_users(["alice"])).values()
        assert not alice.is_admin and not alice.deleted
        assert (alice.about, alice.picture_id) == ("", None)  # the profiles migration
        await upgraded.set_profile(alice.user_id, "hello", None)
        assert (await upgraded.get_users([alice.user_id]))[alice.user_id].about == "hello"
        later = await upgraded.create_user("bob", "Bob", None, "h", first_becomes_admin=True)
        assert not later.is_admin  # an existing install gets no automatic admin
        await upgraded.block(alice.user_id, later.user_id)
    finally:
        await upgraded.close()
    again = SqlStore(url)
    await again.open()  # a second start applies nothing and fails nothing
    await again.close()


def test_migration_names_fit_their_column() -> None:
    from message_svc import schema

    names = [name for _, name, _ in schema.MIGRATIONS]
    assert len(set(names)) == len(names)
    assert all(len(n) <= 64 for n in names)


# -- the split store: the MongoDB message log is the truth, SQL's thread rows derive from it --


@pytest.mark.parametrize("backend", [SPLIT], indirect=True)
async def test_the_split_store_catches_a_thread_up_with_its_log(store: SqlStore) -> None:
    assert isinstance(store, SplitStore)
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    first = await send(store, ab, alice, "through both")
    # An append whose SQL step never ran (the process died after the log append).
    [orphan] = await store.log.append(
        [LogEntry(ab, alice.user, alice.device_id, "orphan", MessageKind.TEXT, "log only")]
    )
    assert orphan.message.seq == 2
    assert (await store.get_thread(ab)).last_seq == 1  # type: ignore[union-attr]
    # The next append to the thread moves the row over both, in seq order.
    third = await send(store, ab, bob, "after it")
    assert third.seq == 3
    assert [m.text for m in await store.list_messages(ab, 0, 0, 10, False)] == [
        "through both",
        "log only",
        "after it",
    ]
    [summary] = await store.list_threads(bob.id, None, 10)
    assert (summary.thread.last_seq, summary.unread_count) == (3, 2)
    # What SQL answers is what the log holds: same seqs, same ids.
    logged = await store.log.read(ab, 0, 0, 10, False)
    assert [(m.seq, m.msg_id) for m in logged] == [
        (m.seq, m.msg_id) for m in await store.list_messages(ab, 0, 0, 10, False)
    ]
    assert logged[0].msg_id == first.msg_id
    # A retry of the orphan's key answers with the stored entry, nothing appended.
    [again] = await append(store, [text(ab, alice, "log only", key="orphan")])
    assert again.duplicate and again.message.seq == 2
    # Another one behind the log, repaired at start.
    await store.log.append(
        [LogEntry(ab, bob.user, bob.device_id, "late", MessageKind.TEXT, "repaired at start")]
    )
    other = reopen(store)
    await other.open()
    try:
        assert (await other.get_thread(ab)).last_seq == 4  # type: ignore[union-attr]
        [summary] = await other.list_threads(alice.id, None, 10)
        assert summary.last_message is not None
        assert (summary.last_message.text, summary.unread_count) == ("repaired at start", 2)
    finally:
        await other.close()


@pytest.mark.parametrize("backend", [SPLIT], indirect=True)
async def test_the_split_store_signs_an_erased_accounts_log_entries(store: SqlStore) -> None:
    assert isinstance(store, SplitStore)
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    await send(store, ab, alice, "signed")
    await store.erase_user(alice.id)
    [m] = await store.log.read(ab, 0, 0, 10, False)
    assert (m.sender.user_id, m.sender.display_name) == (alice.id, "Deleted account")
    assert m.sender.username == f"~deleted-{alice.id}"


@pytest.mark.parametrize("backend", [SPLIT], indirect=True)
async def test_the_split_store_refuses_a_log_behind_its_thread_rows(backend: Backend) -> None:
    url = await backend.new_url()
    sql = SqlStore(url)  # written without the log: its thread rows have no entries there
    await sql.open()
    try:
        alice = await person(sql, "alice")
        await send(sql, await sql.direct_thread(alice.id, alice.id), alice, "only in SQL")
    finally:
        await sql.close()
    split = backend.make(url)
    with pytest.raises(FailedPrecondition, match="message log"):
        await split.open()  # and closes what it opened


async def _sql_bodies(store: SqlStore, thread_id: int) -> list[tuple[int, str, object, object]]:
    """What the SQL `messages` table holds of a thread's bodies: (seq, text, system, payload)."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    msg = schema.messages
    engine = create_async_engine(store.url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(msg.c.seq, msg.c.text, msg.c.system, msg.c.payload)
                .where(msg.c.thread_id == thread_id)
                .order_by(msg.c.seq)
            )
            return [(int(r.seq), r.text, r.system, r.payload) for r in rows]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", [SPLIT], indirect=True)
async def test_the_split_store_reads_bodies_from_the_log_and_keeps_none_in_sql(
    store: SqlStore,
) -> None:
    assert isinstance(store, SplitStore)
    from message_svc.mongolog import entry_id

    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    first = await send(store, ab, alice, "hello world")
    [reply] = await append(store, [replace(text(ab, bob, "a reply"), reply_to_seq=first.seq)])
    [edit] = await append(store, [change(ab, alice, MessageKind.EDIT, first.seq, "hello there")])
    await append(store, [change(ab, bob, MessageKind.REACTION, first.seq, "👍")])
    [fwd] = await append(store, [replace(text(ab, bob, ""), forward=(ab, first.seq))])
    assert reply.message.reply_to is not None and reply.message.reply_to.snippet == "hello world"
    assert edit.message.text == "hello there" and fwd.message.text == "hello there"
    # SQL keeps a narrow row per entry: no text, no system event, no payload.
    rows = await _sql_bodies(store, ab)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert {r[1:] for r in rows} == {("", None, None)}
    page = await store.list_messages(ab, 0, 0, 10, False)
    assert [(m.text, m.emoji) for m in page] == [
        ("hello there", ""),
        ("a reply", ""),
        ("hello there", ""),
        ("", "👍"),
        ("hello there", ""),
    ]
    assert page[0].edit_seq == edit.message.seq and [r.emoji for r in page[0].reactions] == ["👍"]
    assert page[1].reply_to == reply.message.reply_to and page[4].forwarded
    # Change the log behind SQL's back: every read shows what the log holds.
    coll = store.log.collection
    await coll.update_one({"_id": entry_id(ab, edit.message.seq)}, {"$set": {"x": "log edit"}})
    await coll.update_one({"_id": entry_id(ab, fwd.message.seq)}, {"$set": {"x": "log fwd"}})
    [folded] = await store.list_messages(ab, 0, 2, 10, True)
    assert folded.text == "log edit"
    synced = await store.messages_after([(ab, 0, 10)], 10)
    assert [m.text for m in synced][::2] == ["log edit", "log edit", "log fwd"]
    [summary] = await store.list_threads(alice.id, None, 10)
    assert summary.last_message is not None and summary.last_message.text == "log fwd"
    found = await store.search_messages(bob.id, ["log"], 0, 0, 10)
    assert [(m.seq, m.text) for m in found] == [(fwd.message.seq, "log fwd"), (1, "log edit")]
    assert await store.search_messages(bob.id, ["there"], 0, 0, 10) == []
    # A delete clears the folded state; the log keeps the entries.
    await append(store, [change(ab, alice, MessageKind.DELETE, first.seq)])
    [gone, *_] = await store.list_messages(ab, 0, 0, 10, False)
    assert (gone.deleted, gone.text, gone.reactions) == (True, "", ())
    edits = [m for m in await store.messages_after([(ab, 0, 10)], 10) if m.kind is MessageKind.EDIT]
    assert [m.text for m in edits] == [""]
    assert (await store.log.read(ab, 0, 0, 10, False))[0].text == "hello world"


@pytest.mark.parametrize("backend", [SPLIT], indirect=True)
async def test_the_split_store_rebuilds_folded_state_from_the_log(store: SqlStore) -> None:
    assert isinstance(store, SplitStore)
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    first = await send(store, ab, alice, "to be edited")
    second = await send(store, ab, bob, "to be deleted")

    def event(who: Person, kind: MessageKind, target: int, body: str) -> LogEntry:
        return LogEntry(
            ab, who.user, who.device_id, f"ev-{next(_keys)}", kind, body, target_seq=target
        )

    # Events in the log only (their SQL step died): the repair at start applies them.
    await store.log.append(
        [
            event(alice, MessageKind.EDIT, first.seq, "edited in the log"),
            event(bob, MessageKind.REACTION, first.seq, "🎉"),
            event(bob, MessageKind.DELETE, second.seq, ""),
            event(bob, MessageKind.EDIT, second.seq, "lost a race with the delete"),
        ]
    )
    other = reopen(store)
    await other.open()
    try:
        one, two = await other.list_messages(ab, 0, 0, 10, False, folded=True)
        assert (one.text, one.edit_seq, [r.emoji for r in one.reactions]) == (
            "edited in the log",
            3,
            ["🎉"],
        )
        assert (two.deleted, two.text, two.edit_seq) == (True, "", 0)
        [summary] = await other.list_threads(alice.id, None, 10)
        assert (summary.thread.last_seq, summary.unread_count) == (6, 1)
        assert [m.seq for m in await other.search_messages(alice.id, ["edited"], 0, 0, 10)] == [1]
    finally:
        await other.close()


async def test_pruning_a_thread_drops_its_older_messages_from_reads(store: SqlStore) -> None:
    """The canary's prune: what is below the seq is gone from history and sync."""
    alice = await person(store, "alice")
    own = await store.direct_thread(alice.id, alice.id)
    for i in range(5):
        await send(store, own, alice, f"probe {i}")
    assert await store.prune_messages(own, 4) == 3
    assert await all_seqs(store, own) == [4, 5]
    assert [m.seq for m in await store.messages_after([(own, 0, 10)], 10)] == [4, 5]
    [summary] = await store.list_threads(alice.id, None, 10)
    assert summary.last_message is not None and summary.last_message.text == "probe 4"
    assert await send(store, own, alice, "after") is not None
    assert await all_seqs(store, own) == [4, 5, 6]
    if isinstance(store, SplitStore):  # the log is append-only: it keeps every entry
        assert [m.seq for m in await store.log.read(own, 0, 0, 10, False)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("backend", [SPLIT], indirect=True)
async def test_the_split_store_reads_entries_written_before_ids_named_thread_and_seq(
    store: SqlStore,
) -> None:
    assert isinstance(store, SplitStore)
    alice, bob = await person(store, "alice"), await person(store, "bob")
    ab = await store.direct_thread(alice.id, bob.id)
    await send(store, ab, alice, "an older entry")
    # As an older log stored it: the same document under an ObjectId.
    coll = store.log.collection
    doc = await coll.find_one_and_delete({"t": ab, "s": 1})
    assert doc is not None
    del doc["_id"]
    await coll.insert_one(doc)
    [summary] = await store.list_threads(bob.id, None, 10)
    assert summary.last_message is not None and summary.last_message.text == "an older entry"
