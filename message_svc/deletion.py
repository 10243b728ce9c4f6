"""Deleting an account: its own data goes, its messages stay in others' history, unsigned.

What goes: the password, phone, contacts (both ways), blocks (both ways), devices (logged
out), delivered cursors, memberships of groups (a "left" event in each, as from the
deleted account). What stays: the messages it sent, shown under "Deleted account", and
the direct threads of the people it wrote to (they can read them, not answer them: a send
to a deleted account is refused like one to a person who blocked you). Reports about the
account and the audit log stay for the admins. The row itself stays under a name nobody
can register, so history keeps pointing at one sender.
"""

from __future__ import annotations

import logging

from message_svc.accounts import Accounts
from message_svc.groups import Groups
from message_svc.messaging import Messaging
from message_svc.store import DELETED_NAME, Store
from natter.domain import Principal, User
from natter.errors import NatterError, NotFound

logger = logging.getLogger(__name__)


class Deletion:
    def __init__(
        self, store: Store, accounts: Accounts, groups: Groups, messaging: Messaging
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.groups = groups
        self.messaging = messaging

    async def delete_own(self, who: Principal, password: str) -> None:
        await self.accounts.check_password(who, password)
        await self.delete(who.user.user_id)

    async def delete(self, user_id: int) -> None:
        row = (await self.store.get_users([user_id])).get(user_id)
        if row is None or row.deleted:
            raise NotFound(f"no account {user_id}", "USER_NOT_FOUND")
        groups = await self.store.user_groups(user_id)
        revoked = await self.store.erase_user(user_id)
        await self.accounts.announce_revoked(user_id, revoked)
        self.messaging.forget_user(user_id)
        gone = Principal(User(user_id, f"~deleted-{user_id}", DELETED_NAME), 0)
        for thread_id in groups:
            try:
                await self.groups.leave(gone, thread_id)
            except NatterError as e:  # left meanwhile: nothing to do
                logger.info("deleted account %d did not leave group %d: %s", user_id, thread_id, e)
