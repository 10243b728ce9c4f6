"""`natter admin …`: the operator's command, over an admin's token or the data folder itself.

With `--data DIR` (or `--database-url URL`, or `--config FILE`) the command opens the
database directly and acts as "local:<os user>" — whoever can read the data folder owns
the server anyway, and this is how the first admin of an existing install is chosen. Without
them it calls AdminService on the server with the profile's token, which must be an admin's.
Both ways run the same servicer and rules, and every action lands in the audit log. Logouts
made over the data folder reach a running server's open streams within
`session_recheck_seconds` (a minute); over a token they are immediate.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from message_svc import MessageService, SqlStore
from message_svc.admin import Actor
from message_svc.admin_servicer import AdminServicer
from natter import convert
from natter import domain as d
from natter import settings as settings_mod
from natter.errors import InvalidArgument
from natter.sdk.client import POLICIES, POLICY_NAMES, Client
from natter.v1 import admin_service_pb2 as adpb
from natter.v1 import safety_service_pb2 as sfpb


class Backend(Protocol):
    async def call(self, method: str, request: Any) -> Any: ...
    async def close(self) -> None: ...


class RemoteAdmin:
    """AdminService on the server, with the profile's (admin) token."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def call(self, method: str, request: Any) -> Any:
        return await self.client.admin(method, request)

    async def close(self) -> None:
        await self.client.close()


class _NoFanout:
    """Over the data folder there are no devices here to push to; servers find out later."""

    async def deliver(self, deliveries: Any) -> None:
        return None


class _LocalServicer(AdminServicer):
    def __init__(self, service: MessageService, actor: Actor) -> None:
        super().__init__(service.accounts, service.admin)
        self.local = actor

    async def _actor(self, context: Any) -> Actor:
        return self.local


class LocalAdmin:
    """The same servicer over the database directly, acting as local:<os user>."""

    def __init__(self, settings: settings_mod.Settings) -> None:
        self.store = SqlStore(settings.db_url)
        service = MessageService(self.store, settings, _NoFanout())
        self.servicer = _LocalServicer(service, Actor(None, f"local:{getpass.getuser()}"))
        self.opened = False

    async def call(self, method: str, request: Any) -> Any:
        if not self.opened:
            await self.store.open()
            self.opened = True
        fn: Callable[[Any, Any], Awaitable[Any]] = getattr(self.servicer, method)
        return await fn(request, None)

    async def close(self) -> None:
        if self.opened:
            await self.store.close()


def local_settings(args: argparse.Namespace, env: dict[str, str]) -> settings_mod.Settings | None:
    """Settings for local access, when the command names a data folder, database or config."""
    if not (args.data or args.database_url or args.config):
        return None
    overrides = {"data_dir": args.data, "database_url": args.database_url}
    return settings_mod.load(overrides, env, Path(args.config) if args.config else None)


def add_parser(
    command: Callable[[str, str], argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    fn: Callable[[Any], Awaitable[None]],
) -> None:
    ad = command(
        "admin",
        "administer the server: users, devices, invites, reports, registration, audit log",
    )
    ad.add_argument(
        "--data",
        metavar="DIR",
        help="act on this data folder directly, as local:<you> (default: over the server, "
        "with this profile's admin token)",
    )
    ad.add_argument("--database-url", metavar="URL", help="act on this database directly")
    ad.add_argument(
        "--config", metavar="FILE", help="act on the database of this TOML settings file"
    )
    ad.set_defaults(fn=fn)
    groups = ad.add_subparsers(dest="area", required=True, metavar="AREA")

    def area(name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        ap = groups.add_parser(name, help=help, description=help, parents=[common])
        ap.set_defaults(parser=ap)
        return ap.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(
        actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
    ) -> argparse.ArgumentParser:
        ap = actions.add_parser(name, help=help, description=help, parents=[common])
        ap.set_defaults(parser=ap)
        return ap

    u = area(
        "users", "list, show, create, disable, enable, delete, reset-password, promote, demote"
    )
    ls = action(u, "list", "list accounts (QUERY matches names and phones)")
    ls.add_argument(
        "query", nargs="?", default="", metavar="QUERY", help="part of a name (default: all)"
    )
    for name, what in (
        ("show", "an account and its devices"),
        ("disable", "disable an account: it cannot log in, its devices are logged out"),
        ("enable", "enable a disabled account"),
        ("promote", "make an account an admin"),
        ("demote", "make an admin an ordinary account"),
    ):
        action(u, name, what).add_argument("user", metavar="USER", help="username or phone")
    de = action(u, "delete", "delete an account (its messages stay, signed Deleted account)")
    de.add_argument("user", metavar="USER", help="username or phone")
    de.add_argument("--yes", action="store_true", help="really delete (default: refuse)")
    rp = action(u, "reset-password", "set a new password and log out every device")
    rp.add_argument("user", metavar="USER", help="username or phone")
    rp.add_argument(
        "--generate",
        action="store_true",
        help="generate the password and print it (default: NATTER_NEW_PASSWORD, else a prompt)",
    )
    cu = action(u, "create", "create an account, whatever the registration policy")
    cu.add_argument("user", metavar="USER", help="username: 3-32 of a-z, 0-9, '.', '_', '-'")
    cu.add_argument("--name", help="display name (default: the username)")
    cu.add_argument("--phone", help="phone in E.164 form (default: none)")
    cu.add_argument("--admin", action="store_true", help="make it an admin (default: not)")

    dv = area("devices", "list or log out an account's devices")
    action(dv, "list", "an account's devices").add_argument("user", metavar="USER", help="username")
    rv = action(dv, "revoke", "log out devices of an account (all when no ID is given)")
    rv.add_argument("user", metavar="USER", help="username or phone")
    rv.add_argument("ids", nargs="*", type=int, metavar="ID", help="device ids (default: all)")

    iv = area("invites", "create, list or revoke invite codes")
    ic = action(iv, "create", "make single-use invite codes (printed once)")
    ic.add_argument("--count", type=int, default=1, metavar="N", help="how many (default: 1)")
    ic.add_argument("--note", default="", help="a note, such as whom they are for (default: none)")
    ic.add_argument(
        "--days", type=float, default=0, metavar="D", help="valid for D days (default: 7)"
    )
    il = action(iv, "list", "invite codes not used yet")
    il.add_argument("--all", action="store_true", help="also used, revoked and expired ones")
    action(iv, "revoke", "revoke an unused code").add_argument(
        "hint", metavar="HINT", help="the code or its first 6 characters"
    )

    rs = area("reports", "list, show or resolve users' reports")
    rl = action(rs, "list", "open reports, oldest first")
    rl.add_argument("--all", action="store_true", help="also resolved ones")
    action(rs, "show", "a report with its copied messages").add_argument(
        "id", type=int, metavar="ID", help="the report's id"
    )
    rr = action(rs, "resolve", "close a report")
    rr.add_argument("id", type=int, metavar="ID", help="the report's id")
    rr.add_argument("--note", default="", help="what was done (default: resolved)")

    rg = groups.add_parser(
        "registration",
        help="show or choose who may register",
        description="show or choose who may register: open, invite, closed, or default "
        "(the server's `registration` setting again)",
        parents=[common],
    )
    rg.set_defaults(parser=rg, action="")
    rg.add_argument(
        "policy",
        nargs="?",
        choices=["open", "invite", "closed", "default"],
        help="the new policy (default: show the one in force)",
    )
    au = groups.add_parser("audit", help="the audit log, newest first", parents=[common])
    au.set_defaults(parser=au, action="")
    au.add_argument("--limit", type=int, default=50, metavar="N", help="entries (default: 50)")


def _account_text(a: adpb.Account) -> str:
    flags = [f for f, on in (("admin", a.is_admin), ("disabled", a.disabled)) if on]
    return f"{a.user.user_id:>6}  {a.user.username:<24} {a.user.display_name:<24} {' '.join(flags)}"


def _account_obj(a: adpb.Account) -> dict[str, Any]:
    return {
        "type": "account",
        "user_id": a.user.user_id,
        "username": a.user.username,
        "display_name": a.user.display_name,
        "phone": a.phone,
        "admin": a.is_admin,
        "disabled": a.disabled,
        "created": _ts(a, "create_time"),
        "last_seen": _ts(a, "last_seen_time"),
    }


def _ts(msg: Any, field: str) -> str | None:
    value = convert.opt_ts(msg, field)
    return value.astimezone().isoformat(timespec="seconds") if value else None


async def run(app: Any, backend: Backend) -> None:
    """Carry out `natter admin AREA ACTION …`; `app` is the CLI's App (out, args, passwords)."""
    a, out = app.args, app.out
    area, act = a.area, a.action
    call = backend.call
    if area == "users":
        if act == "list":
            token = ""
            while True:
                res = await call(
                    "ListUsers", adpb.ListUsersRequest(query=a.query, page_token=token)
                )
                for acc in res.accounts:
                    out.emit(_account_obj(acc), _account_text(acc))
                token = res.next_page_token
                if not token:
                    return
        if act == "show":
            res = await call("GetUser", adpb.GetUserRequest(username=a.user))
            out.emit(_account_obj(res.account), _account_text(res.account))
            for dev in res.devices:
                _device(out, res.account.user.username, dev)
            return
        if act == "create":
            password = app.new_password()
            res = await call(
                "CreateUser",
                adpb.CreateUserRequest(
                    username=a.user,
                    display_name=a.name or "",
                    phone=a.phone or "",
                    password=password,
                    is_admin=a.admin,
                ),
            )
            out.emit(_account_obj(res.account), "created " + _account_text(res.account).strip())
            return
        if act in ("disable", "enable"):
            res = await call(
                "SetUserDisabled",
                adpb.SetUserDisabledRequest(username=a.user, disabled=act == "disable"),
            )
            gone = list(res.revoked_device_ids)
            out.emit(
                {"type": f"user_{act}d", "username": a.user, "devices_logged_out": gone},
                f"{act}d {a.user}" + (f"; logged out {len(gone)} device(s)" if gone else ""),
            )
            return
        if act == "delete":
            if not a.yes:
                raise InvalidArgument(f"this deletes {a.user} for good; add --yes to go ahead")
            await call("DeleteUser", adpb.DeleteUserRequest(username=a.user))
            out.emit({"type": "user_deleted", "username": a.user}, f"deleted {a.user}")
            return
        if act == "reset-password":
            given = "" if a.generate else app.new_password()
            res = await call(
                "ResetPassword", adpb.ResetPasswordRequest(username=a.user, new_password=given)
            )
            shown = f"; new password: {res.password}" if a.generate else ""
            out.emit(
                {
                    "type": "password_reset",
                    "username": a.user,
                    "password": res.password if a.generate else None,
                    "devices_logged_out": list(res.revoked_device_ids),
                },
                f"reset the password of {a.user}; logged out "
                f"{len(res.revoked_device_ids)} device(s){shown}",
            )
            return
        if act in ("promote", "demote"):
            await call(
                "SetUserAdmin", adpb.SetUserAdminRequest(username=a.user, is_admin=act == "promote")
            )
            what = "an admin" if act == "promote" else "an ordinary account"
            out.emit({"type": f"user_{act}d", "username": a.user}, f"{a.user} is {what}")
            return
    if area == "devices":
        if act == "list":
            res = await call("GetUser", adpb.GetUserRequest(username=a.user))
            for dev in res.devices:
                _device(out, a.user, dev)
            return
        res = await call(
            "RevokeUserDevices", adpb.RevokeUserDevicesRequest(username=a.user, device_ids=a.ids)
        )
        gone = list(res.revoked_device_ids)
        out.emit(
            {"type": "devices_logged_out", "username": a.user, "device_ids": gone},
            f"logged out {len(gone)} device(s) of {a.user}"
            + (f": {', '.join(map(str, gone))}" if gone else ""),
        )
        return
    if area == "invites":
        if act == "create":
            res = await call(
                "CreateInvites",
                adpb.CreateInvitesRequest(
                    count=a.count, note=a.note, valid_seconds=int(a.days * 86_400)
                ),
            )
            until = _ts(res, "expire_time")
            for code in res.codes:
                out.emit({"type": "invite", "code": code, "expires": until}, code)
            return
        if act == "list":
            res = await call("ListInvites", adpb.ListInvitesRequest(include_done=a.all))
            for inv in res.invites:
                state = (
                    "used"
                    if inv.HasField("use_time")
                    else "revoked"
                    if inv.HasField("revoke_time")
                    else "open"
                )
                out.emit(
                    {
                        "type": "invite",
                        "hint": inv.hint,
                        "note": inv.note,
                        "state": state,
                        "expires": _ts(inv, "expire_time"),
                        "used_by": inv.used_by_user_id or None,
                    },
                    f"{inv.hint}…  {state:<8} expires {_ts(inv, 'expire_time')}  {inv.note}",
                )
            return
        await call("RevokeInvite", adpb.RevokeInviteRequest(hint=a.hint))
        out.emit({"type": "invite_revoked", "hint": a.hint[:6]}, f"revoked invite {a.hint[:6]}…")
        return
    if area == "reports":
        if act == "list":
            res = await call("ListReports", adpb.ListReportsRequest(include_resolved=a.all))
            for r in res.reports:
                _report(out, r)
            return
        if act == "show":
            res = await call("GetReport", adpb.GetReportRequest(report_id=a.id))
            _report(out, res.report)
            for m in res.report.messages:
                msg = convert.message_of(m)
                out.emit(
                    {
                        "type": "reported_message",
                        "report_id": a.id,
                        "thread": msg.thread_id,
                        "seq": msg.seq,
                        "from": msg.sender.display_name,
                        "text": msg.text,
                        "time": msg.create_time.isoformat(timespec="seconds"),
                    },
                    f"    #{msg.thread_id}:{msg.seq} {msg.sender.display_name}: {msg.text}",
                )
            return
        await call("ResolveReport", adpb.ResolveReportRequest(report_id=a.id, resolution=a.note))
        out.emit({"type": "report_resolved", "report_id": a.id}, f"resolved report {a.id}")
        return
    if area == "registration":
        if a.policy is None:
            res = await call("GetRegistration", adpb.GetRegistrationRequest())
            name = POLICY_NAMES.get(res.policy, "unknown")
            source = "chosen by an admin" if res.chosen_by_admin else "the server's setting"
            out.emit(
                {"type": "registration", "policy": name, "chosen_by_admin": res.chosen_by_admin},
                f"registration: {name} ({source})",
            )
            return
        request = (
            adpb.SetRegistrationRequest(use_server_setting=True)
            if a.policy == "default"
            else adpb.SetRegistrationRequest(policy=POLICIES[a.policy])
        )
        res = await call("SetRegistration", request)
        name = POLICY_NAMES.get(res.policy, "unknown")
        out.emit({"type": "registration", "policy": name}, f"registration: {name}")
        return
    if area == "audit":
        token, listed = "", 0
        while listed < a.limit:
            res = await call(
                "ListAuditLog",
                adpb.ListAuditLogRequest(page_size=min(1000, a.limit - listed), page_token=token),
            )
            for e in res.entries:
                listed += 1
                out.emit(
                    {
                        "type": "audit",
                        "time": _ts(e, "time"),
                        "actor": e.actor,
                        "action": e.action,
                        "target": e.target,
                        "detail": e.detail,
                    },
                    f"{_ts(e, 'time')}  {e.actor:<20} {e.action:<22} {e.target} {e.detail}".rstrip(),
                )
            token = res.next_page_token
            if not token:
                return
        return
    raise InvalidArgument(f"unknown admin command {area} {act}")


def _device(out: Any, username: str, dev: Any) -> None:
    x: d.Device = convert.device_of(dev)
    active = (
        x.last_active_time.astimezone().isoformat(timespec="seconds")
        if x.last_active_time
        else "never"
    )
    out.emit(
        {
            "type": "device",
            "username": username,
            "device_id": x.device_id,
            "name": x.name,
            "platform": x.platform,
            "last_active": None if x.last_active_time is None else active,
        },
        f"{x.device_id:>6}  {x.name:<20} {x.platform or '-':<10} active {active}",
    )


REASONS = {v: k.removeprefix("REPORT_REASON_").lower() for k, v in sfpb.ReportReason.items()}


def _report(out: Any, r: adpb.Report) -> None:
    state = "resolved" if r.HasField("resolve_time") else "open"
    reason = REASONS.get(r.reason, str(r.reason))
    out.emit(
        {
            "type": "report",
            "report_id": r.report_id,
            "reporter": r.reporter.username,
            "subject": r.subject.username,
            "thread": r.thread_id or None,
            "reason": reason,
            "text": r.text,
            "state": state,
            "resolution": r.resolution or None,
            "created": _ts(r, "create_time"),
        },
        f"report {r.report_id} [{state}] {r.reporter.username} -> {r.subject.username}: "
        f"{reason}"
        + (f" in #{r.thread_id}" if r.thread_id else "")
        + (f" — {r.text}" if r.text else ""),
    )
