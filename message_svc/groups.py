"""Group rules: create, rename, add, remove, promote, demote, leave — each a system message."""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Sequence

from message_svc import rules
from message_svc.accounts import public
from message_svc.contacts import Contacts
from message_svc.messaging import Messaging
from message_svc.ports import Fanout
from message_svc.store import MemberChange, MemberRow, NewMessage, Store, ThreadRow, UserRow
from natter.domain import (
    Message,
    MessageKind,
    Principal,
    Role,
    SystemEvent,
    SystemKind,
    Thread,
    ThreadKind,
    queues_push,
)
from natter.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted
from natter.identifiers import normalise
from natter.settings import Settings


def describe(event: SystemEvent) -> str:
    """A plain-text rendering stored with the event, for clients that do not render events."""
    shown = [u.username for u in event.users[:10]]
    rest = len(event.users) - len(shown)
    names = ", ".join(shown) + (f" and {rest} more" if rest else "")
    who = event.actor.username
    return {
        SystemKind.GROUP_CREATED: f"{who} created the group {event.title!r}",
        SystemKind.MEMBERS_ADDED: f"{who} added {names}",
        SystemKind.MEMBERS_REMOVED: f"{who} removed {names}",
        SystemKind.MEMBER_LEFT: f"{who} left",
        SystemKind.TITLE_CHANGED: f"{who} renamed the group to {event.title!r}",
        SystemKind.ADMINS_PROMOTED: f"{who} made {names} admin",
        SystemKind.ADMINS_DEMOTED: f"{who} removed admin from {names}",
    }[event.kind]


def _names(rows: Sequence[UserRow]) -> str:
    return ", ".join(r.username for r in rows[:10]) + (" ..." if len(rows) > 10 else "")


class Groups:
    """Membership of group threads; the thread itself records every change in order."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        fanout: Fanout,
        messaging: Messaging,
        contacts: Contacts,
    ) -> None:
        self.store = store
        self.settings = settings
        self.fanout = fanout
        self.messaging = messaging
        self.contacts = contacts
        # Changes to one group run one at a time in this process, so rule checks (the last
        # admin, the member cap) see the state they change.
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- commands ------------------------------------------------------------------------

    async def create(self, who: Principal, title: str, members: Sequence[str]) -> Thread:
        name = rules.title(title)
        idents = self._identifiers(members, joining=True, allow_empty=True)
        rows = await self._resolve(idents)
        others = [r for r in rows if r.user_id != who.user.user_id]
        self._check_cap(1 + len(others), 0)
        await self._not_blocked(who, others)
        event = SystemEvent(
            SystemKind.GROUP_CREATED, who.user, tuple(public(r) for r in others), name
        )
        thread_id, message = await self.store.create_group(
            name, who.user.user_id, [r.user_id for r in others], self._new(0, who, event)
        )
        await self.messaging.publish(
            message,
            ThreadKind.GROUP,
            extra_users=[who.user.user_id, *(r.user_id for r in others)],
        )
        view, _ = await self.messaging.get_thread(who, thread_id)
        return view

    async def rename(self, who: Principal, thread_id: int, title: str) -> Message:
        name = rules.title(title)
        async with self._lock(thread_id):
            await self._admin(who, thread_id)
            event = SystemEvent(SystemKind.TITLE_CHANGED, who.user, (), name)
            message = await self.store.change_group(
                thread_id, [], name, self._new(thread_id, who, event)
            )
        await self.messaging.publish(message, ThreadKind.GROUP)
        return message

    async def add(self, who: Principal, thread_id: int, members: Sequence[str]) -> Message:
        idents = self._identifiers(members, joining=True)
        async with self._lock(thread_id):
            await self._admin(who, thread_id)
            active = set(await self.store.active_member_ids(thread_id))
            rows = await self._resolve(idents)
            fresh = [r for r in rows if r.user_id not in active]
            if not fresh:
                raise FailedPrecondition(f"{_names(rows)} already in the group", "ALREADY_MEMBERS")
            await self._not_blocked(who, fresh)
            self._check_cap(len(active) + len(fresh), len(active))
            full = not self.settings.group_history_from_join
            changes = [MemberChange(r.user_id, join=True, full_history=full) for r in fresh]
            event = SystemEvent(SystemKind.MEMBERS_ADDED, who.user, tuple(public(r) for r in fresh))
            message = await self.store.change_group(
                thread_id,
                changes,
                None,
                self._new(thread_id, who, event),
                max_members=self.settings.max_group_members,
            )
        await self.messaging.publish(
            message, ThreadKind.GROUP, extra_users=[r.user_id for r in fresh]
        )
        return message

    async def remove(self, who: Principal, thread_id: int, members: Sequence[str]) -> Message:
        idents = self._identifiers(members)
        async with self._lock(thread_id):
            await self._admin(who, thread_id, "remove members; to leave, use LeaveGroup")
            rows = await self._resolve(idents)
            if any(r.user_id == who.user.user_id for r in rows):
                raise InvalidArgument(
                    "you cannot remove yourself; use LeaveGroup to leave", "REMOVE_SELF"
                )
            active = set(await self.store.active_member_ids(thread_id))
            gone = [r for r in rows if r.user_id in active]
            if not gone:
                raise FailedPrecondition(f"{_names(rows)} not in the group", "NOT_MEMBERS")
            event = SystemEvent(
                SystemKind.MEMBERS_REMOVED, who.user, tuple(public(r) for r in gone)
            )
            message = await self.store.change_group(
                thread_id,
                [MemberChange(r.user_id, leave=True) for r in gone],
                None,
                self._new(thread_id, who, event),
            )
        await self.messaging.publish(
            message, ThreadKind.GROUP, extra_users=[r.user_id for r in gone]
        )
        return message

    async def set_role(
        self, who: Principal, thread_id: int, members: Sequence[str], role: Role
    ) -> Message:
        if role not in (Role.MEMBER, Role.ADMIN):
            raise InvalidArgument(
                f"a member's role is MEMBER or ADMIN, not {role.name}", "BAD_ROLE"
            )
        idents = self._identifiers(members)
        async with self._lock(thread_id):
            await self._admin(who, thread_id)
            rows = await self._resolve(idents)
            current = {m.user_id: m for m in await self.store.list_members(thread_id) if m.active}
            strangers = [r for r in rows if r.user_id not in current]
            if strangers:
                raise FailedPrecondition(f"{_names(strangers)} not in the group", "NOT_MEMBERS")
            changing = [r for r in rows if current[r.user_id].role is not role]
            if not changing:
                what = "admins" if role is Role.ADMIN else "ordinary members"
                raise FailedPrecondition(f"{_names(rows)} already {what}", "NO_CHANGE")
            if role is Role.MEMBER:
                ids = {r.user_id for r in changing}
                left = [
                    m for m in current.values() if m.role is Role.ADMIN and m.user_id not in ids
                ]
                if not left:
                    raise FailedPrecondition(
                        "a group needs an admin: promote someone before demoting the last admin",
                        "LAST_ADMIN",
                    )
            kind = SystemKind.ADMINS_PROMOTED if role is Role.ADMIN else SystemKind.ADMINS_DEMOTED
            event = SystemEvent(kind, who.user, tuple(public(r) for r in changing))
            message = await self.store.change_group(
                thread_id,
                [MemberChange(r.user_id, role=role) for r in changing],
                None,
                self._new(thread_id, who, event),
            )
        await self.messaging.publish(message, ThreadKind.GROUP)
        return message

    async def leave(self, who: Principal, thread_id: int) -> None:
        """Leave; the last admin leaving first promotes the longest-standing member."""
        promoted: Message | None = None
        async with self._lock(thread_id):
            _, me = await self._group_member(who, thread_id)
            if me.role is Role.ADMIN:
                members = [m for m in await self.store.list_members(thread_id) if m.active]
                others = [m for m in members if m.user_id != who.user.user_id]
                if others and not any(m.role is Role.ADMIN for m in others):
                    heir = min(others, key=lambda m: (m.create_time, m.user_id))
                    heir_user = (await self.messaging.users([heir.user_id]))[heir.user_id]
                    event = SystemEvent(SystemKind.ADMINS_PROMOTED, who.user, (heir_user,))
                    promoted = await self.store.change_group(
                        thread_id,
                        [MemberChange(heir.user_id, role=Role.ADMIN)],
                        None,
                        self._new(thread_id, who, event),
                    )
            event = SystemEvent(SystemKind.MEMBER_LEFT, who.user)
            message = await self.store.change_group(
                thread_id,
                [MemberChange(who.user.user_id, leave=True)],
                None,
                self._new(thread_id, who, event),
            )
        if promoted is not None:
            await self.messaging.publish(promoted, ThreadKind.GROUP)
        await self.messaging.publish(message, ThreadKind.GROUP, extra_users=[who.user.user_id])

    # -- checks --------------------------------------------------------------------------

    async def _not_blocked(self, who: Principal, rows: Sequence[UserRow]) -> None:
        """Nobody who blocked the actor is put in a group by them."""
        refusing = await self.store.blocked_by(who.user.user_id, [r.user_id for r in rows])
        if refusing:
            names = _names([r for r in rows if r.user_id in refusing])
            raise PermissionDenied(f"you cannot add {names} to groups", "CANNOT_ADD")

    def _lock(self, thread_id: int) -> asyncio.Lock:
        lock = self._locks.get(thread_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[thread_id] = lock
        return lock

    async def _group_member(self, who: Principal, thread_id: int) -> tuple[ThreadRow, MemberRow]:
        thread, me = await self.messaging.active_member(who, thread_id)
        if thread.kind is not ThreadKind.GROUP:
            raise FailedPrecondition(
                f"thread {thread_id} is a direct thread; only groups have members to manage",
                "NOT_A_GROUP",
            )
        return thread, me

    async def _admin(
        self, who: Principal, thread_id: int, what: str = "do that"
    ) -> tuple[ThreadRow, MemberRow]:
        thread, me = await self._group_member(who, thread_id)
        if me.role is not Role.ADMIN:
            raise PermissionDenied(f"only group admins may {what}", "NOT_AN_ADMIN")
        return thread, me

    def _identifiers(
        self, members: Sequence[str], *, joining: bool = False, allow_empty: bool = False
    ) -> list[str]:
        idents = list(dict.fromkeys(normalise(m) for m in members if m.strip()))
        if not idents and not allow_empty:
            raise InvalidArgument("name at least one member", "NO_MEMBERS")
        cap = self.settings.max_group_members
        if joining:  # unresolved yet, but naming more people than a group holds cannot work
            self._check_cap(len(idents), 0)
        elif len(idents) > cap:
            raise InvalidArgument(f"at most {cap} members per request", "TOO_MANY_USERS")
        return idents

    def _check_cap(self, total: int, have: int) -> None:
        cap = self.settings.max_group_members
        if total > cap:
            raise ResourceExhausted(
                f"a group has at most {cap} members; this would make {total}"
                + (f" (it has {have})" if have else ""),
                "GROUP_FULL",
            )

    async def _resolve(self, idents: Sequence[str]) -> list[UserRow]:
        if not idents:
            return []
        return await self.contacts.resolve_many(list(idents), len(idents))

    @staticmethod
    def _new(thread_id: int, who: Principal, event: SystemEvent) -> NewMessage:
        return NewMessage(
            thread_id,
            who.user,
            who.device_id,
            f"sys-{uuid.uuid4().hex}",
            MessageKind.SYSTEM,
            describe(event),
            event,
            notify=queues_push(MessageKind.SYSTEM, event),
        )
