"""The server's administration: accounts, devices, invites, reports, who may register.

Two ways in, one set of rules: an admin account over AdminService (its token), or whoever
can open the data folder (`natter admin --data DIR`, the same objects over the database
directly; they act as "local:<os user>"). Every call, reads included, is written to the
audit log with the actor.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from message_svc import schema as t
from message_svc.accounts import Accounts, token_hash
from message_svc.contacts import Contacts
from message_svc.deletion import Deletion
from message_svc.store import AuditRow, DeviceRow, InviteRow, ReportRow, Store, UserRow
from natter.domain import Principal
from natter.errors import InvalidArgument, NotFound, PermissionDenied
from natter.identifiers import normalise
from natter.settings import REGISTRATION, Settings

MAX_INVITES = 100
PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an admin account, or local access to the data folder (user_id None)."""

    user_id: int | None
    name: str


def _page(size: int) -> int:
    return PAGE if size <= 0 else min(size, MAX_PAGE)


def _number(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 18:
        raise InvalidArgument("page_token is not one this server issued", "BAD_PAGE_TOKEN")
    return int(token)


class Admin:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        accounts: Accounts,
        contacts: Contacts,
        deletion: Deletion,
    ) -> None:
        self.store = store
        self.settings = settings
        self.accounts = accounts
        self.contacts = contacts
        self.deletion = deletion

    async def actor(self, who: Principal) -> Actor:
        """The caller as an actor, if an admin (PermissionDenied NOT_AN_ADMIN otherwise)."""
        row = (await self.store.get_users([who.user.user_id])).get(who.user.user_id)
        if row is None or not row.is_admin or row.deleted or row.disabled:
            raise PermissionDenied("only the server's admins may do that", "NOT_AN_ADMIN")
        return Actor(row.user_id, row.username)

    async def _audit(self, actor: Actor, action: str, target: str = "", detail: str = "") -> None:
        await self.store.audit(actor.user_id, actor.name, action, target, detail)

    async def _account(self, identifier: str) -> UserRow:
        ident = normalise(identifier)
        row = (await self.store.find_users([ident])).get(ident) if ident else None
        if row is None or row.deleted:
            raise NotFound(f"no account {identifier!r}", "USER_NOT_FOUND")
        return row

    # -- accounts ------------------------------------------------------------------------

    async def users(
        self, actor: Actor, query: str, page_size: int, token: str
    ) -> tuple[list[UserRow], str]:
        size = _page(page_size)
        rows = await self.store.list_users(query.strip(), _number(token), size + 1)
        await self._audit(actor, "users.list", query.strip())
        more = len(rows) > size
        rows = rows[:size]
        return rows, (str(rows[-1].user_id) if more and rows else "")

    async def user(self, actor: Actor, identifier: str) -> tuple[UserRow, list[DeviceRow]]:
        row = await self._account(identifier)
        await self._audit(actor, "users.show", row.username)
        return row, await self.accounts.active_devices(row.user_id)

    async def create_user(
        self,
        actor: Actor,
        username: str,
        display_name: str,
        phone: str,
        password: str,
        is_admin: bool,
    ) -> UserRow:
        row = await self.accounts.create_account(username, display_name, phone, password, is_admin)
        await self._audit(actor, "users.create", row.username, "admin" if row.is_admin else "")
        return row

    async def set_disabled(self, actor: Actor, identifier: str, disabled: bool) -> list[int]:
        row = await self._account(identifier)
        changed = await self.store.set_disabled(row.user_id, disabled)
        revoked = await self.accounts.revoke(row.user_id, None) if disabled else []
        action = "users.disable" if disabled else "users.enable"
        await self._audit(actor, action, row.username, "" if changed else "no change")
        return revoked

    async def delete_user(self, actor: Actor, identifier: str) -> None:
        row = await self._account(identifier)
        await self._audit(actor, "users.delete", row.username, f"user {row.user_id}")
        await self.deletion.delete(row.user_id)

    async def reset_password(
        self, actor: Actor, identifier: str, new_password: str
    ) -> tuple[str, list[int]]:
        row = await self._account(identifier)
        password = new_password or secrets.token_urlsafe(12)
        hashed = await self.accounts.hash_password(password, row.username)
        await self.store.set_password(row.user_id, hashed)
        revoked = await self.accounts.revoke(row.user_id, None)
        await self._audit(actor, "users.reset_password", row.username, f"{len(revoked)} devices")
        return password, revoked

    async def set_admin(self, actor: Actor, identifier: str, is_admin: bool) -> bool:
        row = await self._account(identifier)
        changed = await self.store.set_admin(row.user_id, is_admin)
        action = "users.promote" if is_admin else "users.demote"
        await self._audit(actor, action, row.username, "" if changed else "no change")
        return changed

    async def revoke_devices(
        self, actor: Actor, identifier: str, device_ids: list[int]
    ) -> list[int]:
        row = await self._account(identifier)
        revoked = await self.accounts.revoke(row.user_id, device_ids or None)
        if device_ids and not revoked:
            raise NotFound(
                f"{row.username} has no logged-in device among {device_ids}", "DEVICE_NOT_FOUND"
            )
        await self._audit(actor, "devices.revoke", row.username, ",".join(str(d) for d in revoked))
        return revoked

    # -- invites -------------------------------------------------------------------------

    async def create_invites(
        self, actor: Actor, count: int, note: str, valid_seconds: int
    ) -> tuple[list[str], datetime]:
        n = 1 if count <= 0 else count
        if n > MAX_INVITES:
            raise InvalidArgument(f"at most {MAX_INVITES} invites at a time", "TOO_MANY_INVITES")
        if valid_seconds < 0:
            raise InvalidArgument("valid_seconds must not be negative", "BAD_DURATION")
        seconds = valid_seconds or self.settings.invite_lifetime_seconds
        expire = datetime.now(UTC) + timedelta(seconds=seconds)
        codes = []
        for _ in range(n):
            code = secrets.token_urlsafe(12)
            await self.store.create_invite(
                token_hash(code), code[:6], actor.user_id, note.strip()[:128], expire
            )
            codes.append(code)
        await self._audit(
            actor, "invites.create", "", f"{n} until {expire.isoformat(timespec='seconds')}"
        )
        return codes, expire

    async def invites(
        self, actor: Actor, include_done: bool, page_size: int, token: str
    ) -> tuple[list[InviteRow], str]:
        rows = await self.store.list_invites(include_done)
        start = _number(token)
        size = _page(page_size)
        await self._audit(actor, "invites.list")
        page = rows[start : start + size]
        return page, (str(start + size) if start + size < len(rows) else "")

    async def revoke_invite(self, actor: Actor, hint: str) -> None:
        key = hint.strip()[:6]
        if not key or not await self.store.revoke_invite(key):
            raise NotFound(f"no unused invite {hint!r}", "INVITE_NOT_FOUND")
        await self._audit(actor, "invites.revoke", key)

    # -- reports -------------------------------------------------------------------------

    async def reports(
        self, actor: Actor, include_resolved: bool, page_size: int, token: str
    ) -> tuple[list[ReportRow], str]:
        size = _page(page_size)
        rows = await self.store.list_reports(not include_resolved, _number(token), size + 1)
        await self._audit(actor, "reports.list")
        more = len(rows) > size
        rows = rows[:size]
        return rows, (str(rows[-1].report_id) if more and rows else "")

    async def report(self, actor: Actor, report_id: int) -> ReportRow:
        row = await self.store.get_report(report_id)
        if row is None:
            raise NotFound(f"no report {report_id}", "REPORT_NOT_FOUND")
        await self._audit(actor, "reports.show", str(report_id))
        return row

    async def resolve_report(self, actor: Actor, report_id: int, resolution: str) -> None:
        note = resolution.strip()[:1024]
        if not await self.store.resolve_report(report_id, actor.user_id, note or "resolved"):
            if await self.store.get_report(report_id) is None:
                raise NotFound(f"no report {report_id}", "REPORT_NOT_FOUND")
            raise InvalidArgument(f"report {report_id} is resolved already", "ALREADY_RESOLVED")
        await self._audit(actor, "reports.resolve", str(report_id), note)

    # -- who may register ----------------------------------------------------------------

    async def registration(self, actor: Actor) -> tuple[str, bool]:
        await self._audit(actor, "registration.show")
        return await self.accounts.policy()

    async def set_registration(self, actor: Actor, policy: str | None) -> str:
        if policy is not None and policy not in REGISTRATION:
            raise InvalidArgument(
                f"registration is one of {', '.join(REGISTRATION)}", "BAD_REGISTRATION"
            )
        await self.store.set_config(t.REGISTRATION, policy)
        await self._audit(actor, "registration.set", policy or "server setting")
        return (await self.accounts.policy())[0]

    async def audit_log(
        self, actor: Actor, page_size: int, token: str
    ) -> tuple[list[AuditRow], str]:
        size = _page(page_size)
        rows = await self.store.list_audit(_number(token), size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return rows, (str(rows[-1].entry_id) if more and rows else "")
