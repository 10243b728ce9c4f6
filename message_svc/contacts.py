"""Address books: add and remove contacts, list them a page at a time, discover registered people."""

from __future__ import annotations

from message_svc.profiles import Profiles
from message_svc.store import Store, UserRow
from natter.domain import Contact, Principal, User
from natter.errors import InvalidArgument, NotFound
from natter.identifiers import normalise

MAX_DISCOVER = 1000


class Contacts:
    def __init__(self, store: Store, profiles: Profiles | None = None) -> None:
        self.store = store
        self.profiles = profiles or Profiles(store)

    async def resolve(self, identifier: str) -> UserRow:
        ident = normalise(identifier)
        if not ident:
            raise InvalidArgument("a username or phone number is required", "MISSING_USER")
        row = (await self.store.find_users([ident])).get(ident)
        if row is None:
            raise NotFound(f"no user {identifier!r}", "USER_NOT_FOUND")
        return row

    async def resolve_many(self, identifiers: list[str], limit: int) -> list[UserRow]:
        if len(identifiers) > limit:
            raise InvalidArgument(f"at most {limit} users per request", "TOO_MANY_USERS")
        idents = [normalise(i) for i in identifiers]
        found = await self.store.find_users(idents)
        missing = [i for i in idents if i not in found]
        if missing:
            raise NotFound(f"no such users: {', '.join(missing[:10])}", "USER_NOT_FOUND")
        return list({found[i].user_id: found[i] for i in idents}.values())

    async def add(self, who: Principal, identifier: str, alias: str) -> Contact:
        row = await self.resolve(identifier)
        if row.user_id == who.user.user_id:
            raise InvalidArgument("you cannot add yourself as a contact", "SELF_CONTACT")
        alias = alias.strip()[:64]
        await self.store.add_contact(who.user.user_id, row.user_id, alias)
        shown = await self.profiles.shown(who.user.user_id, [row])
        return Contact(shown[row.user_id], alias)

    async def remove(self, who: Principal, identifier: str) -> None:
        row = await self.resolve(identifier)
        if not await self.store.remove_contact(who.user.user_id, row.user_id):
            raise NotFound(f"{row.username} is not in your contacts", "NOT_A_CONTACT")

    async def page(self, who: Principal, page_size: int, token: str) -> tuple[list[Contact], str]:
        size = 100 if page_size <= 0 else min(page_size, 1000)
        rows = await self.store.list_contacts(who.user.user_id, token, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        shown = await self.profiles.shown(who.user.user_id, [u for u, _ in rows])
        contacts = [Contact(shown[u.user_id], alias) for u, alias in rows]
        return contacts, (rows[-1][0].username if more else "")

    async def discover(self, who: Principal, identifiers: list[str]) -> list[tuple[str, User]]:
        if len(identifiers) > MAX_DISCOVER:
            raise InvalidArgument(
                f"at most {MAX_DISCOVER} identifiers per request", "TOO_MANY_IDENTIFIERS"
            )
        idents = {i: normalise(i) for i in identifiers if i.strip()}
        found = await self.store.find_users(list(idents.values()))
        shown = await self.profiles.shown(who.user.user_id, found.values())
        return [(raw, shown[found[n].user_id]) for raw, n in idents.items() if n in found]
