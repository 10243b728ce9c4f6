"""Profiles: the about line and the picture, who may see them, and telling others of a change.

A profile (about, picture) is shown to the user, to the people the user has as contacts
and to the people who share a thread with them (both active members), never across a
block either way: the same people a picture download is checked against
(sqlstore._picture_shown). Everyone else sees the display name only, as in message
senders.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable

from message_svc.ports import Fanout
from message_svc.store import Store, UserRow
from natter.domain import Delivery, Principal, ProfileChanged, User
from natter.errors import InvalidArgument, NotFound, PermissionDenied

logger = logging.getLogger(__name__)

MAX_ABOUT = 140  # characters, as WhatsApp's "about"
# Everyone a user shares a thread with, however large the thread.
_ANY_SIZE = 1 << 30
_CONTACT_PAGE = 1000


def public(row: UserRow) -> User:
    return User(row.user_id, row.username, row.display_name)


def profile(row: UserRow) -> User:
    """The user with their profile, for someone who may see it."""
    return User(row.user_id, row.username, row.display_name, row.about, row.picture_id or "")


def about_text(value: str) -> str:
    """A status line as stored: trimmed, at most MAX_ABOUT characters, no control characters."""
    text = value.strip()
    if len(text) > MAX_ABOUT:
        raise InvalidArgument(
            f"about is at most {MAX_ABOUT} characters (this one has {len(text)})", "ABOUT_TOO_LONG"
        )
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise InvalidArgument(
            "about is one line of text: no line breaks, tabs or other control characters",
            "BAD_ABOUT",
        )
    return text


class Profiles:
    def __init__(self, store: Store, fanout: Fanout | None = None) -> None:
        self.store = store
        self.fanout = fanout

    # -- who sees what -------------------------------------------------------------------

    async def visible(self, viewer_id: int, owner_ids: Iterable[int]) -> set[int]:
        """The owners whose profile the viewer may see."""
        wanted = set(owner_ids)
        seen = wanted & {viewer_id}
        others = sorted(wanted - seen)
        if not others:
            return seen
        blocks = (await self.store.block_links([viewer_id])).get(viewer_id, set())
        added_me = set((await self.store.watchers([viewer_id])).get(viewer_id, []))
        peers = await self.store.thread_peers_among(viewer_id, others)
        return seen | {o for o in others if (o in added_me or o in peers) and o not in blocks}

    async def shown(self, viewer_id: int, rows: Iterable[UserRow]) -> dict[int, User]:
        """Each user as the viewer may see them: with the profile, or the name only."""
        rows = list(rows)
        ok = await self.visible(viewer_id, [r.user_id for r in rows if r.about or r.picture_id])
        return {r.user_id: profile(r) if r.user_id in ok else public(r) for r in rows}

    async def audience(self, owner_id: int) -> tuple[set[int], set[int]]:
        """Who to tell of a change: those who see the profile, and those who see the name only.

        The first are the owner's contacts and thread peers; the second the people who
        have the owner as a contact without being either. Blocks leave people out of both.
        """
        full = set((await self.store.small_thread_peers([owner_id], _ANY_SIZE)).get(owner_id, ()))
        after = ""
        while True:
            page = await self.store.list_contacts(owner_id, after, _CONTACT_PAGE)
            full.update(u.user_id for u, _ in page)
            if len(page) < _CONTACT_PAGE:
                break
            after = page[-1][0].username
        name_only = set((await self.store.watchers([owner_id])).get(owner_id, [])) - full
        blocks = (await self.store.block_links([owner_id])).get(owner_id, set())
        full -= blocks | {owner_id}
        name_only -= blocks | {owner_id}
        return full, name_only

    # -- changes -------------------------------------------------------------------------

    async def picture(self, who: Principal, attachment_id: str) -> str:
        """The attachment id if it may be the user's picture: an image they uploaded."""
        if not attachment_id:
            return ""
        if not attachment_id.isalnum() or len(attachment_id) > 26:
            raise NotFound("no such attachment", "ATTACHMENT_NOT_FOUND")
        record = await self.store.get_attachment(attachment_id)
        if record is None:
            raise NotFound("no such attachment", "ATTACHMENT_NOT_FOUND")
        if record.owner_id != who.user.user_id:
            raise PermissionDenied(
                "a profile picture must be an image you uploaded yourself", "NOT_YOUR_ATTACHMENT"
            )
        a = record.attachment
        if not a.mime_type.startswith("image/") or not a.has_thumbnail:
            raise InvalidArgument(
                f"a profile picture must be an image (this is {a.mime_type})", "NOT_AN_IMAGE"
            )
        return attachment_id

    async def announce(self, who: Principal) -> None:
        """Tell the user's other devices, contacts and chat partners of a profile change."""
        if self.fanout is None:
            return
        me = who.user.user_id
        row = (await self.store.get_users([me])).get(me)
        if row is None:
            return
        full, name_only = await self.audience(me)
        deliveries = [
            Delivery(ProfileChanged(profile(row)), user_ids=(me,), exclude_device_id=who.device_id)
        ]
        if full:
            deliveries.append(Delivery(ProfileChanged(profile(row)), user_ids=tuple(sorted(full))))
        if name_only:
            deliveries.append(
                Delivery(ProfileChanged(public(row)), user_ids=tuple(sorted(name_only)))
            )
        try:
            await self.fanout.deliver(deliveries)
        except Exception:  # lists carry the profile; only the live update is late
            logger.warning("push of a profile change of user %s failed", me, exc_info=True)
