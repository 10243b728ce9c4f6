"""The `natter` command line: runs the server, and is a chat client built on the SDK."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import re
import shlex
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app import malloc
from app.profiles import Profile, ProfileStore
from natter import __version__, convert, tls
from natter import domain as d
from natter import settings as settings_mod
from natter.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NatterError,
    Unauthenticated,
    Unavailable,
)
from natter.rpc import code_name
from natter.sdk import Client, Connected, Connection, Disconnected, Media, Rejected, SyncDone
from natter.sdk.client import open_channel

DEFAULT_SERVER = "127.0.0.1:7070"
DEFAULT_PROFILE = "default"
THREAD = re.compile(r"#?([0-9]+)")
UNSUPPORTED = "unsupported message — update the app"


class Output:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def emit(self, obj: dict[str, Any], text: str) -> None:
        if self.json:
            print(json.dumps(obj, ensure_ascii=False, default=str), flush=True)
        else:
            print(text, flush=True)

    def status(self, obj: dict[str, Any], text: str) -> None:
        """A line about the connection, not the conversation: stderr unless it is JSON."""
        if self.json:
            self.emit(obj, text)
        else:
            print(text, file=sys.stderr, flush=True)


class ServerUnreachable(Unavailable):
    """Nothing answers at the server address."""

    def __init__(self, server: str) -> None:
        super().__init__(
            f"cannot reach the natter server at {server}; start one with `natter serve`, "
            "or point at another with --server HOST:PORT or NATTER_SERVER",
            "SERVER_UNREACHABLE",
        )


def _time(value: datetime | None) -> str:
    return value.astimezone().isoformat(timespec="seconds") if value else ""


def attachment_obj(a: d.Attachment) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": a.attachment_id,
        "name": a.name,
        "type": a.mime_type,
        "size": a.size,
    }
    if a.width:
        obj["width"], obj["height"] = a.width, a.height
    if a.duration_ms:
        obj["duration_ms"] = a.duration_ms
    if a.voice_note:
        obj["voice_note"] = True
    return obj


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return ""


def attachment_text(a: d.Attachment) -> str:
    what = "voice note" if a.voice_note else a.mime_type
    dims = f" {a.width}x{a.height}" if a.width else ""
    return f"[{what} {a.name}{dims} {_size(a.size)} id {a.attachment_id}]"


EVENT_NAMES = {
    d.MessageKind.REACTION: "reaction",
    d.MessageKind.EDIT: "edit",
    d.MessageKind.DELETE: "delete",
}


def message_obj(m: d.Message, me: int = 0) -> dict[str, Any]:
    """A message as JSON; with `me` (a user id), the user's own messages say so.

    Events (reactions, edits, deletes) are lines too, with `kind` and the `target` seq they
    change; a message read folded carries `edited`, `deleted` and `reactions` (counts).
    """
    obj: dict[str, Any] = {
        "type": "message",
        "thread": m.thread_id,
        "seq": m.seq,
        "msg_id": m.msg_id,
        "from": m.sender.username,
        "text": m.text,
        "time": _time(m.create_time),
    }
    if m.kind in EVENT_NAMES:
        obj["kind"] = EVENT_NAMES[m.kind]
        obj["target"] = m.target_seq
        if m.kind is d.MessageKind.REACTION:
            obj["emoji"] = m.emoji
        verb = {
            d.MessageKind.REACTION: f"reacted {m.emoji} to"
            if m.emoji
            else "removed a reaction from",
            d.MessageKind.EDIT: "edited",
            d.MessageKind.DELETE: "deleted",
        }[m.kind]
        obj["text"] = f"{verb} #{m.thread_id}:{m.target_seq}" + (
            f": {m.text}" if m.kind is d.MessageKind.EDIT else ""
        )
    elif m.kind is d.MessageKind.ATTACHMENT:
        obj["kind"] = "attachment"
        obj["attachments"] = [attachment_obj(a) for a in m.attachments]
    if m.reply_to is not None:
        obj["reply_to"] = {
            "seq": m.reply_to.seq,
            "from": m.reply_to.sender.username,
            "snippet": m.reply_to.snippet,
        }
    if m.forwarded:
        obj["forwarded"] = True
    if m.edit_seq:
        obj["edited"] = True
    if m.deleted:
        obj["deleted"] = True
        obj["text"] = "message deleted"
    if m.hidden:
        obj["hidden"] = True
        obj["text"] = "you deleted this message"
    if m.reactions:
        counts: dict[str, int] = {}
        for r in m.reactions:
            counts[r.emoji] = counts.get(r.emoji, 0) + 1
        obj["reactions"] = counts
    if m.kind is d.MessageKind.UNKNOWN:
        # A kind from a newer server: say so rather than show its text as if it were plain.
        obj["kind"] = "unsupported"
        obj["text"] = UNSUPPORTED
    elif m.kind is d.MessageKind.SYSTEM and m.system is not None:
        obj["system"] = {
            "kind": m.system.kind.name.lower(),
            "actor": m.system.actor.username,
            "users": [u.username for u in m.system.users],
            "title": m.system.title,
        }
        # An event kind this build does not know keeps the server's own description.
        obj["text"] = describe_system(m.system) or m.text
    if m.state is not d.MessageState.UNKNOWN:
        obj["state"] = m.state.name.lower()
    if me and m.sender.user_id == me:
        obj["own"] = True
    return obj


def describe_system(e: d.SystemEvent) -> str:
    """The event in words; "" for a kind this build does not know."""
    names = ", ".join(u.username for u in e.users)
    who = e.actor.username
    return {
        d.SystemKind.GROUP_CREATED: f"{who} created the group {e.title!r}",
        d.SystemKind.MEMBERS_ADDED: f"{who} added {names}",
        d.SystemKind.MEMBERS_REMOVED: f"{who} removed {names}",
        d.SystemKind.MEMBER_LEFT: f"{who} left",
        d.SystemKind.TITLE_CHANGED: f"{who} renamed the group to {e.title!r}",
        d.SystemKind.ADMINS_PROMOTED: f"{who} made {names} admin",
        d.SystemKind.ADMINS_DEMOTED: f"{who} removed admin from {names}",
    }.get(e.kind, "")


def message_line(m: d.Message, me: int = 0) -> str:
    obj = message_obj(m, me)
    state = f" ({obj['state']})" if "state" in obj else ""
    who = f"{m.sender.username} (you)" if obj.get("own") else m.sender.username
    body = obj["text"]
    if "attachments" in obj and not m.deleted and not m.hidden:
        files = " ".join(attachment_text(a) for a in m.attachments)
        body = f"{files} {body}".strip()
    if m.reply_to is not None:
        body = f'(reply to #{m.thread_id}:{m.reply_to.seq} {m.reply_to.sender.username}: "{m.reply_to.snippet}") {body}'
    if m.forwarded:
        body = f"(forwarded) {body}"
    if obj.get("edited") and not m.deleted and not m.hidden:
        body += " (edited)"
    if "reactions" in obj:
        body += "  " + " ".join(f"{e} {n}" for e, n in obj["reactions"].items())
    return f"[{obj['time']}] #{m.thread_id}:{m.seq} {who}: {body}{state}"


class App:
    """Parsed arguments plus the profile they name."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        home = Path(env.get("NATTER_HOME") or Path.home() / ".natter")
        self.profiles = ProfileStore(home)
        self.profile = self.profiles.load(args.profile)
        self.out = Output(args.json)

    @property
    def server(self) -> str:
        return str(
            self.args.server
            or self.env.get("NATTER_SERVER")
            or self.profile.server
            or DEFAULT_SERVER
        )

    def password(self, prompt: str = "password: ") -> str:
        pw = self.env.get("NATTER_PASSWORD")
        if pw:
            return pw
        if not sys.stdin.isatty():
            line = sys.stdin.readline().rstrip("\n")
            if line:
                return line
            raise InvalidArgument("no password: set NATTER_PASSWORD or type it at the prompt")
        return getpass.getpass(prompt)

    def new_password(self) -> str:
        """A new password: NATTER_NEW_PASSWORD, else typed twice at a prompt."""
        pw = self.env.get("NATTER_NEW_PASSWORD")
        if pw:
            return pw
        if not sys.stdin.isatty():
            raise InvalidArgument("no new password: set NATTER_NEW_PASSWORD")
        first = getpass.getpass("new password: ")
        if getpass.getpass("new password again: ") != first:
            raise InvalidArgument("the two new passwords differ")
        return first

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS with --tls (the system's roots) or --ca FILE (a private CA); env NATTER_TLS, NATTER_CA."""
        ca = self.ca
        return tls.channel_credentials(ca) if (self.tls or ca) else None

    @property
    def ca(self) -> str:
        return str(self.args.ca or self.env.get("NATTER_CA") or self.profile.ca or "")

    @property
    def tls(self) -> bool:
        env = self.env.get("NATTER_TLS", "").lower() in ("1", "true", "yes")
        return bool(self.args.tls or env or self.profile.tls or self.ca)

    def login_command(self) -> str:
        """The command that logs this profile in, as the user would type it."""
        name = self.args.profile
        flags = "" if name == DEFAULT_PROFILE else f" --profile {shlex.quote(name)}"
        if self.args.server:
            flags += f" --server {shlex.quote(self.args.server)}"
        return f"natter{flags} login USER"

    def media(self, client: Client) -> Media:
        """Uploads and downloads over the server's HTTP listener (TLS as for gRPC)."""
        ca = self.ca
        context = ssl.create_default_context(cafile=ca) if ca else None
        return Media(client, context)

    def client(self, authed: bool = True) -> Client:
        if authed and not self.profile.token:
            raise Unauthenticated(
                f"profile {self.args.profile!r} is not logged in; run: {self.login_command()}"
            )
        c = Client(
            self.server,
            self.profile.token if authed else "",
            timeout=self.args.rpc_timeout,
            credentials=self.credentials(),
        )
        if authed:
            c.user = d.User(self.profile.user_id, self.profile.username, self.profile.username)
            c.device_id = self.profile.device_id
        return c

    async def reachable(self) -> bool:
        """Whether anything answers gRPC at the server address (any answer, even an error)."""
        async with open_channel(self.server, self.credentials()) as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(), timeout=min(5.0, self.args.rpc_timeout)
                )
            except grpc.aio.AioRpcError as e:
                return e.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
        return True


def thread_arg(value: str) -> int:
    """A thread id as natter prints it (#2) or bare (2)."""
    m = THREAD.fullmatch(value.strip())
    if m is None or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a thread id (such as 2 or #2)")
    return int(m.group(1))


async def resolve_thread(client: Client, target: str) -> int:
    """A thread id (2 or #2), or the direct thread with a username."""
    m = THREAD.fullmatch(target.strip())
    if m is not None:
        return int(m.group(1))
    return int((await client.direct_thread(target)).thread_id)


# -- commands ------------------------------------------------------------------------------


async def cmd_register(app: App) -> None:
    async with app.client(authed=False) as c:
        user = await c.register(
            app.args.user,
            app.password(),
            app.args.name or "",
            app.args.phone or "",
            app.args.invite or "",
        )
    admin = " — the first account, so this server's admin" if c.is_admin else ""
    app.out.emit(
        {
            "type": "registered",
            "user_id": user.user_id,
            "username": user.username,
            "admin": c.is_admin,
        },
        f"registered {user.username} (id {user.user_id}){admin}",
    )


async def cmd_login(app: App) -> None:
    device = app.args.device or f"cli-{app.args.profile}"
    async with app.client(authed=False) as c:
        # A token this profile still holds shows the server it is the owner logging in
        # again: a stranger's wrong guesses elsewhere do not hold it back.
        c.token = app.profile.token if app.profile.username == app.args.user.lower() else ""
        token = await c.login(
            app.args.user, app.password(), device, "cli", replace_oldest=app.args.replace_oldest
        )
        for gone in c.replaced_devices:
            print(f"natter: logged out device {gone} to make room", file=sys.stderr)
        assert c.user is not None
        profile = Profile(
            server=app.server,
            tls=app.tls,
            ca=app.ca,
            username=c.user.username,
            user_id=c.user.user_id,
            device_id=c.device_id,
            token=token,
            cursors={},
        )
    app.profiles.save(app.args.profile, profile)
    app.out.emit(
        {"type": "logged_in", "username": profile.username, "device_id": profile.device_id},
        f"logged in as {profile.username} on device {profile.device_id}",
    )


async def cmd_logout(app: App) -> None:
    async with app.client() as c:
        with contextlib.suppress(Unauthenticated):
            await c.logout()
    app.profiles.delete(app.args.profile)
    app.out.emit({"type": "logged_out"}, "logged out")


async def cmd_devices(app: App) -> None:
    """List the account's devices, or log one (or all the others) out."""
    a = app.args
    async with app.client() as c:
        if a.action == "logout":
            if a.others:
                gone = await c.revoke_other_devices()
            else:
                for device_id in a.ids:
                    await c.revoke_device(device_id)
                gone = list(a.ids)
            app.out.emit(
                {"type": "devices_logged_out", "device_ids": gone},
                f"logged out {len(gone)} device{'s' if len(gone) != 1 else ''}"
                + (f": {', '.join(map(str, gone))}" if gone else ""),
            )
            return
        for dev in await c.devices():
            active = _time(dev.last_active_time) or "never"
            app.out.emit(
                {
                    "type": "device",
                    "device_id": dev.device_id,
                    "name": dev.name,
                    "platform": dev.platform,
                    "last_active": _time(dev.last_active_time) or None,
                    "expires": _time(dev.expire_time) or None,
                    "current": dev.current,
                },
                f"{dev.device_id:>6}  {dev.name:<20} {dev.platform or '-':<10} "
                f"active {active}{'  (this device)' if dev.current else ''}",
            )


async def cmd_password(app: App) -> None:
    """Change the password; the other devices are logged out unless --keep-devices."""
    current = app.password("current password: ")
    new = app.new_password()
    async with app.client() as c:
        gone = await c.change_password(current, new, keep_other_devices=app.args.keep_devices)
    app.out.emit(
        {"type": "password_changed", "devices_logged_out": gone},
        "password changed" + (f"; logged out {len(gone)} other device(s)" if gone else ""),
    )


async def cmd_delete_account(app: App) -> None:
    if not app.args.yes:
        raise InvalidArgument(
            "this deletes your account for good (your messages stay in others' chats as "
            '"Deleted account"); run again with --yes to go ahead'
        )
    password = app.password()
    async with app.client() as c:
        await c.delete_account(password)
    app.profiles.delete(app.args.profile)
    app.out.emit({"type": "account_deleted"}, "account deleted")


async def cmd_block(app: App) -> None:
    async with app.client() as c:
        for name in app.args.users:
            if app.args.command == "block":
                user = await c.block(name)
                app.out.emit(
                    {"type": "blocked", "username": user.username}, f"blocked {user.username}"
                )
            else:
                await c.unblock(name)
                app.out.emit({"type": "unblocked", "username": name}, f"unblocked {name}")


async def cmd_blocked(app: App) -> None:
    async with app.client() as c:
        for user in await c.blocked():
            app.out.emit(
                {"type": "blocked", "username": user.username, "display_name": user.display_name},
                f"{user.username:<24} {user.display_name}",
            )


async def cmd_report(app: App) -> None:
    a = app.args
    async with app.client() as c:
        thread_id = await resolve_thread(c, a.thread) if a.thread else 0
        report_id = await c.report(
            a.user or "", a.reason, a.text or "", thread_id, a.seq or [], a.block
        )
    app.out.emit(
        {"type": "reported", "report_id": report_id},
        f"reported (report {report_id}); the server's admins will look at it"
        + ("; blocked too" if a.block else ""),
    )


async def cmd_contacts(app: App) -> None:
    async with app.client() as c:
        if app.args.action == "add":
            for user in app.args.users:
                ct = await c.add_contact(user)
                app.out.emit(
                    {"type": "contact_added", "username": ct.user.username},
                    f"added {ct.user.username} ({ct.user.display_name})",
                )
        elif app.args.action == "rm":
            for user in app.args.users:
                await c.remove_contact(user)
                app.out.emit({"type": "contact_removed", "username": user}, f"removed {user}")
        else:
            for ct in await c.contacts():
                app.out.emit(
                    {
                        "type": "contact",
                        "username": ct.user.username,
                        "display_name": ct.user.display_name,
                        "alias": ct.alias,
                    },
                    f"{ct.user.username:<24} {ct.user.display_name}",
                )


async def upload_files(app: App, c: Client) -> list[str]:
    """Upload the --file arguments (each resumable, in chunks); their attachment ids."""
    ids: list[str] = []
    files = [Path(f) for f in (getattr(app.args, "file", None) or [])]
    if not files:
        return ids
    async with app.media(c) as media:
        for path in files:
            if not path.is_file():
                raise InvalidArgument(f"{path}: no such file")
            a = await media.upload(
                path,
                voice_note=bool(getattr(app.args, "voice", False)),
                duration_ms=int(getattr(app.args, "duration_ms", 0) or 0),
            )
            app.out.status(
                {"type": "uploaded", "attachment": attachment_obj(a)},
                f"uploaded {path.name}: {a.mime_type}, {_size(a.size)}",
            )
            ids.append(a.attachment_id)
    return ids


async def cmd_send(app: App) -> None:
    text = " ".join(app.args.text)
    async with app.client() as c:
        attachments = await upload_files(app, c)
        thread = app.args.thread
        recipient = "" if thread else app.args.user
        req = d.SendRequest(
            "", text, thread or 0, recipient, tuple(attachments), getattr(app.args, "reply", 0) or 0
        )
        await send_request(app, c, req)


async def cmd_reply(app: App) -> None:
    async with app.client() as c:
        thread_id = await resolve_thread(c, app.args.target)
        attachments = await upload_files(app, c)
        req = d.SendRequest(
            "", " ".join(app.args.text), thread_id, "", tuple(attachments), app.args.seq
        )
        await send_request(app, c, req)


async def cmd_react(app: App) -> None:
    emoji = "" if app.args.remove else (app.args.emoji or "")
    if not emoji and not app.args.remove:
        raise InvalidArgument("name the emoji, or --remove yours")
    async with app.client() as c:
        thread_id = await resolve_thread(c, app.args.target)
        await send_request(
            app, c, d.SendRequest("", "", thread_id, change=d.React(app.args.seq, emoji))
        )


async def cmd_edit(app: App) -> None:
    async with app.client() as c:
        thread_id = await resolve_thread(c, app.args.target)
        req = d.SendRequest("", " ".join(app.args.text), thread_id, change=d.Edit(app.args.seq))
        await send_request(app, c, req)


async def cmd_delete(app: App) -> None:
    async with app.client() as c:
        thread_id = await resolve_thread(c, app.args.target)
        if app.args.for_me:
            changes = await c.hide(thread_id, [app.args.seq])
            app.out.emit(
                {
                    "type": "hidden",
                    "thread": thread_id,
                    "seq": app.args.seq,
                    "changes": len(changes),
                },
                f"deleted #{thread_id}:{app.args.seq} for you (on all your devices)",
            )
            return
        await send_request(app, c, d.SendRequest("", "", thread_id, change=d.Delete(app.args.seq)))


async def cmd_forward(app: App) -> None:
    async with app.client() as c:
        source = await resolve_thread(c, app.args.target)
        change = d.Forward(source, app.args.seq)
        if THREAD.fullmatch(app.args.to.strip()):
            req = d.SendRequest("", "", thread_arg(app.args.to), change=change)
        else:
            req = d.SendRequest("", "", 0, app.args.to, change=change)
        await send_request(app, c, req)


async def cmd_search(app: App) -> None:
    async with app.client() as c:
        thread_id = await resolve_thread(c, app.args.thread) if app.args.thread else 0
        token, shown = "", 0
        while shown < app.args.limit:
            rows, token = await c.search(
                " ".join(app.args.words), thread_id, min(100, app.args.limit - shown), token
            )
            for m in rows:
                obj = message_obj(m)
                obj["type"] = "hit"
                app.out.emit(obj, message_line(m))
            shown += len(rows)
            if not token or not rows:
                break
        if not shown:
            app.out.status({"type": "no_hits"}, "no messages found")


async def cmd_download(app: App) -> None:
    async with app.client() as c:
        thread_id = await resolve_thread(c, app.args.target)
        rows, _ = await c.history(thread_id, before_seq=app.args.seq + 1, limit=1)
        if not rows or rows[-1].seq != app.args.seq:
            raise NatterError(f"#{thread_id}:{app.args.seq} is not a message you can see")
        m = rows[-1]
        if not m.attachments:
            raise InvalidArgument(f"#{thread_id}:{app.args.seq} has no attachments")
        out = Path(app.args.out or ".")
        async with app.media(c) as media:
            for a in m.attachments:
                dest = destination(out, a.name, app.args.force)
                await media.download(a.attachment_id, dest)
                app.out.emit(
                    {
                        "type": "downloaded",
                        "attachment": a.attachment_id,
                        "path": str(dest),
                        "bytes": a.size,
                    },
                    f"saved {dest} ({_size(a.size)})",
                )


def destination(out: Path, name: str, force: bool) -> Path:
    """Where a download goes: into a folder under its own name, or to the path given."""
    dest = out / name if out.is_dir() else out
    if dest.exists() and not force:
        raise InvalidArgument(f"{dest} exists; --force to overwrite it")
    return dest


async def send_request(app: App, c: Client, req: d.SendRequest) -> None:
    """Send through the outbox, retried until acknowledged (bounded by --timeout)."""
    timeout = getattr(app.args, "timeout", 30.0)
    conn = Connection(c, skip_replay=True, auto_ack=False)
    await conn.start(wait_synced=False)
    unreachable = asyncio.Event()
    watch = asyncio.create_task(warn_unreachable(app, conn, unreachable))
    try:
        res = await conn.submit(req, timeout=timeout)
    except TimeoutError:
        why = (
            f"cannot reach the natter server at {app.server}"
            if unreachable.is_set() and conn.stats.connects == 0
            else "the server may be down"
        )
        raise NatterError(f"not acknowledged within {timeout:g} s; {why}") from None
    finally:
        watch.cancel()
        await conn.close()
    app.out.emit(
        {
            "type": "sent",
            "thread": res.thread_id,
            "seq": res.seq,
            "msg_id": res.msg_id,
            "client_msg_id": res.client_msg_id,
            "time": _time(res.create_time),
        },
        f"sent #{res.thread_id}:{res.seq} ({res.msg_id})",
    )


async def warn_unreachable(app: App, conn: Connection, unreachable: asyncio.Event) -> None:
    """While a send waits for a server that does not answer, say so once (on stderr)."""
    while True:
        ev = await conn.next_event()
        if isinstance(ev, Connected):
            return
        if isinstance(ev, Disconnected) and ev.reason != "redirected" and not ev.final:
            if not await app.reachable():
                unreachable.set()
                print(
                    f"natter: cannot reach the natter server at {app.server}; still trying "
                    f"for up to {getattr(app.args, 'timeout', 30.0):g} s (--timeout)",
                    file=sys.stderr,
                    flush=True,
                )
            return


async def cmd_threads(app: App) -> None:
    async with app.client() as c:
        for t in map(convert.thread_of, await c.threads()):
            kind = t.kind.name.lower()
            last = t.last_message
            preview = (
                ""
                if last is None
                else UNSUPPORTED
                if last.kind is d.MessageKind.UNKNOWN
                else "message deleted"
                if last.deleted
                else last.text or " ".join(f"[{x.name}]" for x in last.attachments)
            )
            title = t.title if len(t.title) <= 24 else t.title[:23] + "…"
            members = f"{t.member_count:>5} members" if kind == "group" else ""
            muted = mute_words(t.muted, t.mute_end_time)
            app.out.emit(
                {
                    "type": "thread",
                    "thread": t.thread_id,
                    "kind": kind,
                    "title": t.title,
                    "peer": t.peer.username if t.peer else None,
                    "last_seq": t.last_seq,
                    "unread": t.unread_count,
                    "members": t.member_count,
                    "last_text": preview,
                    "muted": t.muted,
                    "mute_end": _time(t.mute_end_time) or None,
                },
                # Fixed columns, whatever the kind: id, kind, title, members, unread, preview;
                # a muted thread says so before its preview.
                f"#{t.thread_id:<6} {kind:<6} {title:<24} {members:<13} "
                f"unread {t.unread_count:<4} {muted + ' ' if muted else ''}{preview[:40]}".rstrip(),
            )


def mute_words(muted: bool, until: datetime | None) -> str:
    if not muted:
        return ""
    return f"[muted until {_time(until)}]" if until is not None else "[muted]"


DURATION = re.compile(r"([0-9]+)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_arg(value: str) -> timedelta:
    """30m, 8h, 2d, 1w, or seconds."""
    m = DURATION.fullmatch(value.strip().lower())
    if m is None or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 30m, 8h, 2d or 1w")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


async def cmd_mute(app: App) -> None:
    async with app.client() as c:
        thread_id = await resolve_thread(c, app.args.target)
        if app.args.command == "unmute":
            t = await c.unmute(thread_id)
        else:
            t = await c.mute(thread_id, app.args.duration)
    words = mute_words(t.muted, t.mute_end_time) or "[not muted]"
    app.out.emit(
        {
            "type": "mute",
            "thread": t.thread_id,
            "muted": t.muted,
            "mute_end": _time(t.mute_end_time) or None,
        },
        f"#{t.thread_id} {t.title}: {words[1:-1]}",
    )


PREVIEWS = {
    "full": d.NotificationPreview.FULL,
    "sender": d.NotificationPreview.SENDER_ONLY,
    "hidden": d.NotificationPreview.HIDDEN,
}


async def cmd_push(app: App) -> None:
    a = app.args
    async with app.client() as c:
        if a.action == "preview":
            await c.update_settings(notification_preview=PREVIEWS[a.mode])
        elif a.action == "off":
            await c.delete_push_target()
        elif a.action == "gateway":
            await c.set_push_gateway(a.url, a.app_id, a.pushkey)
        config = await c.push_config()
        target = await c.push_target()
        me = await c.me()
    preview = convert.preview_of(me.notification_preview)
    mode = next((k for k, v in PREVIEWS.items() if v is preview), "full")
    where = "none"
    if target is not None:
        which = target.WhichOneof("target")
        where = (
            f"web push via {target.web_push.endpoint.split('/')[2]}"
            if which == "web_push"
            else f"gateway {target.gateway.gateway_url} ({target.gateway.app_id})"
        )
    app.out.emit(
        {
            "type": "push",
            "target": where,
            "preview": mode,
            "vapid_public_key": config.vapid_public_key,
            "gateways": list(config.gateway_urls),
            "grace_seconds": config.grace_seconds,
        },
        f"this device: {where}\npreview: {mode}\n"
        f"server key: {config.vapid_public_key}\ngrace: {config.grace_seconds:g} s",
    )


async def cmd_group(app: App) -> None:
    a = app.args
    async with app.client() as c:
        if a.action == "create":
            t = await c.create_group(a.title, a.users)
            app.out.emit(
                {
                    "type": "group_created",
                    "thread": t.thread_id,
                    "title": t.title,
                    "members": t.member_count,
                },
                f"created group #{t.thread_id} {t.title!r} with {t.member_count} members",
            )
            return
        if a.action == "leave":
            await c.leave_group(a.thread)
            app.out.emit({"type": "group_left", "thread": a.thread}, f"left #{a.thread}")
            return
        if a.action == "info":
            res = await c.thread(a.thread)
            t = convert.thread_of(res.thread)
            app.out.emit(
                {
                    "type": "group",
                    "thread": t.thread_id,
                    "title": t.title,
                    "members": t.member_count,
                    "active": t.active,
                    "role": t.role.name.lower(),
                },
                f"#{t.thread_id} {t.title!r}: {t.member_count} members"
                + ("" if t.active else " (you are no longer a member)"),
            )
            for m in map(convert.member_of, res.members):
                role = m.role.name.lower()
                app.out.emit(
                    {
                        "type": "member",
                        "thread": t.thread_id,
                        "username": m.user.username,
                        "display_name": m.user.display_name,
                        "role": role,
                        "read_seq": m.read_seq,
                        "delivered_seq": m.delivered_seq,
                    },
                    f"  {m.user.username:<24} {role:<6} read {m.read_seq}",
                )
            return
        change: Callable[[], Awaitable[d.Message]] = {
            "add": lambda: c.add_members(a.thread, a.users),
            "rm": lambda: c.remove_members(a.thread, a.users),
            "promote": lambda: c.set_role(a.thread, a.users, admin=True),
            "demote": lambda: c.set_role(a.thread, a.users, admin=False),
        }[a.action]
        event = await change()
        app.out.emit(message_obj(event), message_line(event))


async def cmd_status(app: App) -> None:
    async with app.client() as c:
        found = await c.presence(app.args.users)
    shown = set()
    for p in found:
        shown.add(p.user.username)
        seen = _time(p.last_seen_time)
        text = "online" if p.online else (f"offline, last seen {seen}" if seen else "offline")
        app.out.emit(
            {
                "type": "presence",
                "user": p.user.username,
                "online": p.online,
                "last_seen": seen or None,
            },
            f"{p.user.username}: {text}",
        )
    for name in app.args.users:
        if not name.startswith("+") and name.strip().lower() not in shown:
            app.out.emit(
                {"type": "presence", "user": name, "visible": False},
                f"{name}: status not visible to you (not a contact, no shared chat)",
            )


async def cmd_history(app: App) -> None:
    """The thread as people see it (edits, deletes, reactions folded in), or --raw entries."""
    a = app.args
    folded = not a.raw
    async with app.client() as c:
        thread_id = await resolve_thread(c, a.target)
        if a.at:
            # Jump to a message (a search hit, say): some before it, it, some after it.
            half = max(1, a.limit // 2)
            before, _ = await c.history(
                thread_id, before_seq=a.at + 1, limit=half + 1, folded=folded
            )
            after, _ = await c.history(thread_id, after_seq=a.at, limit=half, folded=folded)
            rows = before + after
        else:
            rows, _ = await c.history(thread_id, limit=a.limit, folded=folded)
        for m in rows:
            if m.hidden and folded:
                continue  # deleted for me: gone from my view (--raw shows the entry)
            obj = message_obj(m)
            if a.at and m.seq == a.at:
                obj["at"] = True
            line = message_line(m)
            app.out.emit(obj, ("> " + line) if a.at and m.seq == a.at else line)


async def cmd_read(app: App) -> None:
    """Mark a thread read up to its newest message: the senders see read ticks."""
    async with app.client() as c:
        thread_id = await resolve_thread(c, app.args.target)
        rows, _ = await c.history(thread_id, limit=1)
        seq = rows[-1].seq if rows else 0
        if seq and (await c.thread(thread_id)).thread.read_seq < seq:
            conn = Connection(c, skip_replay=True)
            await conn.start()
            try:
                await conn.read(thread_id, seq)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + app.args.rpc_timeout
                while (await c.thread(thread_id)).thread.read_seq < seq:
                    if loop.time() > deadline:
                        raise Unavailable("the server did not record the read in time")
                    await asyncio.sleep(0.05)
            finally:
                await conn.close()
        app.out.emit(
            {"type": "read", "thread": thread_id, "seq": seq}, f"read #{thread_id} up to {seq}"
        )


class Listener:
    """What `natter listen` has shown, and what it says about the connection.

    "Missed" are messages from others (or from this user's other devices) that arrived while
    this device was away, i.e. in a sync's replay. A message this device sent itself (for
    example with `natter send` on the same profile) is shown as the user's own, never as
    missed. After the first sync a reconnect is quiet unless it was announced or brought
    something new from others.
    """

    def __init__(self, app: App, conn: Connection) -> None:
        self.app = app
        self.conn = conn
        self.me = app.profile.user_id
        self.shown = 0  # messages from others: what --count counts
        self.missed = 0  # in the current sync
        self.syncing = False
        self.syncs = 0
        self.outage = False  # a "reconnecting" line went out since the last sync
        self.probed = False

    def from_here(self, m: d.Message) -> bool:
        device = self.conn.device_id or self.app.profile.device_id
        return m.sender.user_id == self.me and m.sender_device_id == device

    async def on(self, ev: object) -> None:
        out = self.app.out
        if isinstance(ev, d.Message):
            if not self.from_here(ev):
                self.shown += 1
                if self.syncing:
                    self.missed += 1
            out.emit(message_obj(ev, self.me), message_line(ev, self.me))
        elif isinstance(ev, d.UserChange):
            if ev.kind is d.UserChangeKind.HIDE_MESSAGE:
                c = ev.message
                out.status(
                    {"type": "hidden", "thread": c.thread_id, "seq": c.seq, "log_seq": ev.seq},
                    f"-- #{c.thread_id}:{c.seq} deleted for you --",
                )
        elif isinstance(ev, Connected):
            self.syncing, self.missed = True, 0
        elif isinstance(ev, SyncDone):
            self.sync_done()
        elif isinstance(ev, d.Receipt):
            out.emit(
                {
                    "type": "receipt",
                    "thread": ev.thread_id,
                    "user": ev.user.username,
                    "kind": ev.kind.name.lower(),
                    "seq": ev.seq,
                },
                f"{ev.user.username} {ev.kind.name.lower()} #{ev.thread_id}:{ev.seq}",
            )
        elif isinstance(ev, d.Presence):
            out.emit(
                {
                    "type": "presence",
                    "user": ev.user.username,
                    "online": ev.online,
                    "last_seen": _time(ev.last_seen_time),
                },
                f"{ev.user.username} is {'online' if ev.online else 'offline'}",
            )
        elif isinstance(ev, d.Typing):
            out.emit(
                {
                    "type": "typing",
                    "thread": ev.thread_id,
                    "user": ev.user.username,
                    "active": ev.active,
                },
                f"{ev.user.username} {'is typing' if ev.active else 'stopped typing'}"
                f" in #{ev.thread_id}",
            )
        elif isinstance(ev, d.ThreadMute):
            words = mute_words(ev.muted, ev.end_time) or "[not muted]"
            out.emit(
                {
                    "type": "mute",
                    "thread": ev.thread_id,
                    "muted": ev.muted,
                    "mute_end": _time(ev.end_time) or None,
                },
                f"#{ev.thread_id} {words[1:-1]}",
            )
        elif isinstance(ev, Disconnected):
            await self.disconnected(ev)
        elif isinstance(ev, Rejected):
            out.status(
                {
                    "type": "refused",
                    "code": code_name(ev.code),
                    "reason": ev.reason,
                    "message": ev.message,
                },
                f"natter: server refused a frame: {ev.message}",
            )

    def sync_done(self) -> None:
        n, first = self.missed, self.syncs == 0
        self.syncing = False
        self.syncs += 1
        noun = "message" if n == 1 else "messages"
        if first:
            text = f"-- in sync ({n} missed {noun} shown) --"
        elif n:
            text = f"-- back in sync ({n} missed {noun} shown) --"
        elif self.outage:
            text = "-- back in sync --"
        else:
            text = ""
        self.outage = False
        if text or self.app.out.json:  # JSON says every sync: a program may count them
            self.app.out.status({"type": "sync_done", "missed": n}, text)

    async def disconnected(self, ev: Disconnected) -> None:
        if ev.final:
            raise Unauthenticated(ev.reason)
        self.syncing = False
        if ev.reason == "redirected":  # another server owns this user: not an outage
            return
        if self.syncs == 0 and not self.probed:
            # Never connected: nothing answering is an error, not something to wait out.
            self.probed = True
            if not await self.app.reachable():
                raise ServerUnreachable(self.app.server)
        if self.syncs and not self.outage:
            self.outage = True
            self.app.out.status(
                {"type": "reconnecting", "reason": ev.reason},
                "-- connection lost; reconnecting --",
            )


async def cmd_listen(app: App) -> None:
    count, timeout = app.args.count, app.args.timeout
    async with app.client() as c:
        # A terminal that listens is an app in front of someone: no pushes to this device.
        conn = Connection(
            c, cursors=app.profile.cursors, user_log_seq=app.profile.user_log_seq, foreground=True
        )
        await conn.start(wait_synced=False)
        listener = Listener(app, conn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            while count == 0 or listener.shown < count:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    break
                try:
                    ev = await conn.next_event(left)
                except TimeoutError:
                    break
                await listener.on(ev)
        finally:
            await conn.close()
            # What was shown, not what arrived: the rest is shown on the next start.
            app.profile.cursors.update(conn.cursors)
            app.profile.user_log_seq = max(app.profile.user_log_seq, conn.user_log_seq)
            app.profiles.save(app.args.profile, app.profile)


async def cmd_serve(app: App) -> None:
    from app.serve import serve

    a = app.args
    overrides = {
        "role": a.role,
        "data_dir": a.data,
        "grpc_addr": a.grpc,
        "http_addr": a.http,
        "internal_addr": a.internal,
        "database_url": a.database_url,
        "message_log": a.message_log,
        "etcd_endpoints": a.etcd,
        "node_id": a.node_id,
        "log_level": a.log_level,
        "log_format": a.log_format,
        "metrics_addr": a.metrics,
        "tls_cert_file": a.tls_cert,
        "tls_key_file": a.tls_key,
    }
    cfg = settings_mod.load(overrides, app.env, Path(a.config) if a.config else None)
    await serve(cfg)


async def cmd_admin(app: App) -> None:
    from app import admin_cli

    local = admin_cli.local_settings(app.args, app.env)
    backend: admin_cli.Backend = (
        admin_cli.LocalAdmin(local) if local is not None else admin_cli.RemoteAdmin(app.client())
    )
    try:
        await admin_cli.run(app, backend)
    finally:
        await backend.close()


async def cmd_backup(app: App) -> None:
    from message_svc.backup import backup

    a = app.args
    overrides = {"data_dir": a.data, "database_url": a.database_url}
    cfg = settings_mod.load(overrides, app.env, Path(a.config) if a.config else None)
    dest = Path(a.dest)
    count, size = await backup(cfg.db_url, dest)
    app.out.emit(
        {"type": "backup", "path": str(dest), "bytes": size, "messages": count},
        f"backed up {count} messages ({size:,} bytes) to {dest}",
    )


async def cmd_move_to_log(app: App) -> None:
    from message_svc.mongolog import MongoMessageLog
    from message_svc.movelog import move_to_log
    from message_svc.sqlstore import SqlStore

    a = app.args
    overrides = {"data_dir": a.data, "database_url": a.database_url}
    cfg = settings_mod.load(overrides, app.env, Path(a.config) if a.config else None)
    store, log = SqlStore(cfg.db_url), MongoMessageLog(a.message_log)
    await store.open()
    try:
        await log.open()
        moved = await move_to_log(store, log)
    finally:
        await log.close()
        await store.close()
    app.out.emit(
        {
            "type": "moved",
            "threads": moved.threads,
            "entries": moved.entries,
            "gaps": moved.gaps,
            "stripped": moved.stripped,
        },
        f"moved {moved.entries} entries of {moved.threads} threads into the message log "
        f"({moved.gaps} pruned seqs filled); serve with --message-log {a.message_log}",
    )


# -- parser --------------------------------------------------------------------------------


def global_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """The flags every command takes, before its name or after it (`natter send … --json`).

    Repeated on each command with SUPPRESS defaults, so a flag given after the command
    overrides one given before it, and one not given there leaves the other alone.
    """

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    g = p.add_argument_group("global flags (before or after the command)")
    g.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=default(None),
        help="the server to talk to (env NATTER_SERVER; default: the one the profile logged "
        f"in to, else {DEFAULT_SERVER})",
    )
    g.add_argument(
        "--profile",
        metavar="NAME",
        default=default(DEFAULT_PROFILE),
        help="which profile to use; each is one device with its own login, under "
        f"$NATTER_HOME (default: {DEFAULT_PROFILE})",
    )
    g.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print one JSON object per line instead of text (default: text)",
    )
    g.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="connect with TLS, trusting the system's CAs (env NATTER_TLS=1; default: off, "
        "or what the profile logged in with)",
    )
    g.add_argument(
        "--ca",
        metavar="FILE",
        default=default(None),
        help="PEM file of the CA that signed the server's certificate; implies --tls "
        "(env NATTER_CA; default: none)",
    )
    g.add_argument("--rpc-timeout", type=float, default=default(15.0), help=argparse.SUPPRESS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="natter",
        description="natter: instant messaging you run. Global flags go before or after "
        "the command.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    global_flags(p, top=True)
    common = argparse.ArgumentParser(add_help=False)
    global_flags(common, top=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        cp = sub.add_parser(name, help=help, description=help, parents=[common])
        cp.set_defaults(parser=cp)  # for usage errors found after parsing (check_args)
        return cp

    s = command("serve", "run the server (embedded by default)")
    s.add_argument(
        "--role",
        help="embedded, socket, message, channel or presence "
        "(default: embedded, every service in one process)",
    )
    s.add_argument("--data", metavar="DIR", help="data folder (default: ./natter-data)")
    s.add_argument(
        "--grpc", metavar="HOST:PORT", help="gRPC listen address (default: 127.0.0.1:7070)"
    )
    s.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="HTTP listen address: web app, gateway, WebSocket (default: 127.0.0.1:7080)",
    )
    s.add_argument(
        "--internal",
        metavar="HOST:PORT",
        help="internal listen address of a cluster role (default: 127.0.0.1, any free port)",
    )
    s.add_argument(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy URL (default: SQLite in the data folder)",
    )
    s.add_argument(
        "--message-log",
        metavar="URL",
        help="MongoDB URL for the message log (default: none, the SQL store keeps it)",
    )
    s.add_argument(
        "--etcd",
        metavar="ENDPOINTS",
        help="comma-separated etcd endpoints for cluster roles (default: none)",
    )
    s.add_argument("--node-id", metavar="ID", help="this node's id (default: generated at start)")
    s.add_argument(
        "--config", metavar="FILE", help="TOML settings file (env NATTER_CONFIG; default: none)"
    )
    s.add_argument("--log-level", help="DEBUG, INFO or WARNING (default: INFO)")
    s.add_argument(
        "--log-format", choices=["json", "text"], help="log lines as JSON or text (default: json)"
    )
    s.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="also serve /metrics on this address (default: none; embedded servers answer "
        "/metrics on the HTTP listener too)",
    )
    s.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate chain: serve gRPC and HTTP over TLS (default: plain)",
    )
    s.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    s.set_defaults(fn=cmd_serve)

    b = command("backup", "copy the embedded database to DEST while it runs")
    b.add_argument("dest", metavar="DEST", help="the new file to write (must not exist)")
    b.add_argument("--data", metavar="DIR", help="data folder (default: ./natter-data)")
    b.add_argument("--database-url", help=argparse.SUPPRESS)
    b.add_argument(
        "--config", metavar="FILE", help="TOML settings file (env NATTER_CONFIG; default: none)"
    )
    b.set_defaults(fn=cmd_backup)

    mv = command(
        "move-to-log",
        "copy the database's messages into an empty MongoDB message log (server stopped)",
    )
    mv.add_argument(
        "--message-log", required=True, metavar="URL", help="mongodb://… of the new log"
    )
    mv.add_argument("--data", metavar="DIR", help="data folder (default: ./natter-data)")
    mv.add_argument(
        "--database-url", metavar="URL", help="the SQL database (default: the data folder's)"
    )
    mv.add_argument(
        "--config", metavar="FILE", help="TOML settings file (env NATTER_CONFIG; default: none)"
    )
    mv.set_defaults(fn=cmd_move_to_log)

    r = command("register", "create an account (password: NATTER_PASSWORD, else a prompt)")
    r.add_argument("user", metavar="USER", help="username: 3-32 of a-z, 0-9, '.', '_', '-'")
    r.add_argument("--name", help="display name (default: the username)")
    r.add_argument("--phone", help="phone in E.164 form, e.g. +4915112345678 (default: none)")
    r.add_argument(
        "--invite",
        metavar="CODE",
        help="an invite code from an admin, where registration needs one (default: none)",
    )
    r.set_defaults(fn=cmd_register)

    lg = command(
        "login", "log this profile in as a new device (password: NATTER_PASSWORD, else a prompt)"
    )
    lg.add_argument("user", metavar="USER", help="username, or phone in E.164 form")
    lg.add_argument("--device", metavar="NAME", help="device name (default: cli-PROFILE)")
    lg.add_argument(
        "--replace-oldest",
        action="store_true",
        help="at the device limit, log out the least recently used device (default: refuse)",
    )
    lg.set_defaults(fn=cmd_login)

    command("logout", "log this device out").set_defaults(fn=cmd_logout)
    dv = command("devices", "list your devices, or log some out: devices logout ID... | --others")
    dv.add_argument(
        "action",
        nargs="?",
        choices=["list", "logout"],
        default="list",
        help="list or logout (default: list)",
    )
    dv.add_argument("ids", nargs="*", type=int, metavar="ID", help="devices to log out")
    dv.add_argument(
        "--others",
        action="store_true",
        help="with logout: every device but this one (default: only the IDs given)",
    )
    dv.set_defaults(fn=cmd_devices)

    pw = command(
        "password",
        "change your password (current: NATTER_PASSWORD, new: NATTER_NEW_PASSWORD, else prompts)",
    )
    pw.add_argument(
        "--keep-devices",
        action="store_true",
        help="keep your other devices logged in (default: log them out)",
    )
    pw.set_defaults(fn=cmd_password)

    da = command("delete-account", "delete your account (password: NATTER_PASSWORD, else a prompt)")
    da.add_argument("--yes", action="store_true", help="really delete it (default: refuse)")
    da.set_defaults(fn=cmd_delete_account)

    for name, what in (("block", "block"), ("unblock", "unblock")):
        bl = command(name, f"{what} people: USER...")
        bl.add_argument("users", nargs="+", metavar="USER", help="usernames or phones")
        bl.set_defaults(fn=cmd_block)
    command("blocked", "the people you blocked").set_defaults(fn=cmd_blocked)

    rep = command("report", "report a person, or messages of a thread, to the server's admins")
    rep.add_argument(
        "user", nargs="?", metavar="USER", help="who (may be left out when --seq names messages)"
    )
    rep.add_argument(
        "--reason",
        choices=["spam", "harassment", "sexual", "scam", "illegal", "other"],
        default="spam",
        help="why (default: %(default)s)",
    )
    rep.add_argument("--text", help="a few words for the admins (default: none)")
    rep.add_argument(
        "--thread",
        metavar="USER|THREAD",
        help="the chat it happened in: a username (your direct chat), or 2 or #2 (default: none)",
    )
    rep.add_argument(
        "--seq",
        type=int,
        action="append",
        metavar="N",
        help="a message of --thread, by seq; repeat for more (default: their latest messages)",
    )
    rep.add_argument("--block", action="store_true", help="also block them (default: do not)")
    rep.set_defaults(fn=cmd_report)

    from app import admin_cli

    admin_cli.add_parser(command, common, cmd_admin)

    c = command("contacts", "list, add or rm contacts")
    c.add_argument(
        "action",
        nargs="?",
        choices=["list", "add", "rm"],
        default="list",
        help="list, add or rm (default: list)",
    )
    c.add_argument("users", nargs="*", metavar="USER", help="usernames to add or remove")
    c.set_defaults(fn=cmd_contacts)

    se = command("send", "send a message to USER, or to a thread with --thread")
    se.add_argument(
        "--thread",
        type=thread_arg,
        metavar="THREAD",
        help="send to this thread (a group, say) instead of a USER: 2 or #2",
    )
    se.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up after S seconds without an answer (default: %(default)g)",
    )
    se.add_argument("user", nargs="?", metavar="USER", help="who to send to (not with --thread)")
    se.add_argument("text", nargs="*", metavar="TEXT", help="the message; words are joined")
    files_flags(se)
    se.add_argument(
        "--reply", type=int, metavar="SEQ", help="quote message SEQ of the thread (default: none)"
    )
    se.set_defaults(fn=cmd_send)

    def target_seq(cp: argparse.ArgumentParser, what: str) -> None:
        cp.add_argument(
            "target", metavar="USER|THREAD", help="a username (your direct thread), or 2 or #2"
        )
        cp.add_argument("seq", type=int, metavar="SEQ", help=f"the message to {what}")
        cp.add_argument(
            "--timeout",
            type=float,
            default=30.0,
            metavar="S",
            help="give up after S seconds without an answer (default: %(default)g)",
        )

    rp = command("reply", "reply to a message, quoting it: USER|THREAD SEQ TEXT...")
    target_seq(rp, "quote")
    rp.add_argument("text", nargs="*", metavar="TEXT", help="the reply; words are joined")
    files_flags(rp)
    rp.set_defaults(fn=cmd_reply)

    re_ = command(
        "react", "react to a message with an emoji (one per person): USER|THREAD SEQ EMOJI"
    )
    target_seq(re_, "react to")
    re_.add_argument("emoji", nargs="?", metavar="EMOJI", help="one emoji, e.g. 👍")
    re_.add_argument("--remove", action="store_true", help="remove your reaction instead")
    re_.set_defaults(fn=cmd_react)

    ed = command(
        "edit", "change the text of your message (within the edit window): USER|THREAD SEQ TEXT..."
    )
    target_seq(ed, "edit")
    ed.add_argument("text", nargs="+", metavar="TEXT", help="the new text; words are joined")
    ed.set_defaults(fn=cmd_edit)

    de = command("delete", "delete a message for everyone, or --for-me: USER|THREAD SEQ")
    target_seq(de, "delete")
    de.add_argument(
        "--for-me",
        action="store_true",
        help="hide it on all your devices only (others keep it); default: for everyone",
    )
    de.set_defaults(fn=cmd_delete)

    fw = command("forward", "forward a copy of a message: USER|THREAD SEQ TO (a USER or THREAD)")
    target_seq(fw, "forward")
    fw.add_argument("to", metavar="TO", help="who or where to forward it: a username, or 2 or #2")
    fw.set_defaults(fn=cmd_forward)

    sr = command("search", "find messages you can see that hold every word: WORD...")
    sr.add_argument("words", nargs="+", metavar="WORD", help="words of three letters or more")
    sr.add_argument(
        "--thread", metavar="USER|THREAD", help="only this thread (default: all of yours)"
    )
    sr.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N hits (default: %(default)s)"
    )
    sr.set_defaults(fn=cmd_search)

    dl = command("download", "save a message's attachments: USER|THREAD SEQ")
    dl.add_argument(
        "target", metavar="USER|THREAD", help="a username (your direct thread), or 2 or #2"
    )
    dl.add_argument("seq", type=int, metavar="SEQ", help="the message with the attachments")
    dl.add_argument(
        "-o", "--out", metavar="PATH", help="a folder, or the file name (default: this folder)"
    )
    dl.add_argument("--force", action="store_true", help="overwrite a file that exists")
    dl.set_defaults(fn=cmd_download)

    command("threads", "your threads, latest first").set_defaults(fn=cmd_threads)

    mu = command("mute", "no push notifications for USER|THREAD, for a while or until unmuted")
    mu.add_argument(
        "target", metavar="USER|THREAD", help="a username (your direct thread), or 2 or #2"
    )
    mu.add_argument(
        "--for",
        dest="duration",
        type=duration_arg,
        metavar="DURATION",
        help="how long: 30m, 8h, 2d, 1w (default: until unmuted)",
    )
    mu.set_defaults(fn=cmd_mute)
    um = command("unmute", "push notifications for USER|THREAD again")
    um.add_argument(
        "target", metavar="USER|THREAD", help="a username (your direct thread), or 2 or #2"
    )
    um.set_defaults(fn=cmd_mute)

    pu = command("push", "push notifications of this device: status, preview, off, gateway")
    ps = pu.add_subparsers(dest="action", metavar="ACTION")
    pu.set_defaults(fn=cmd_push, action="status")
    ps.add_parser("status", help="this device's push target and the privacy mode", parents=[common])
    pp = ps.add_parser(
        "preview",
        help="what notifications show on all your devices: full, sender (sender only) "
        "or hidden (neither sender nor text)",
        parents=[common],
    )
    pp.add_argument("mode", choices=sorted(PREVIEWS), help="full, sender or hidden")
    ps.add_parser("off", help="remove this device's push target", parents=[common])
    pg = ps.add_parser(
        "gateway", help="register a mobile token behind a push gateway", parents=[common]
    )
    pg.add_argument("url", metavar="URL", help="the gateway's notify URL")
    pg.add_argument("app_id", metavar="APP_ID", help="the app id the gateway knows")
    pg.add_argument("pushkey", metavar="PUSHKEY", help="the FCM/APNs token")

    g = command("group", "create and manage groups")
    gs = g.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        ap = gs.add_parser(name, help=help, description=help, parents=[common])
        ap.set_defaults(parser=ap)
        return ap

    gc = action("create", "create a group: TITLE USER...")
    gc.add_argument("title", metavar="TITLE", help="the group's title")
    gc.add_argument("users", nargs="*", metavar="USER", help="members besides you")
    for name, what in (
        ("add", "add members"),
        ("rm", "remove members"),
        ("promote", "make members admins"),
        ("demote", "make admins members"),
    ):
        ga = action(name, f"{what} (admins only): THREAD USER...")
        ga.add_argument("thread", type=thread_arg, metavar="THREAD", help="the group: 2 or #2")
        ga.add_argument("users", nargs="+", metavar="USER", help="the members")
    gl = action("leave", "leave a group: THREAD")
    gl.add_argument("thread", type=thread_arg, metavar="THREAD", help="the group: 2 or #2")
    gi = action("info", "a group's title and members: THREAD")
    gi.add_argument("thread", type=thread_arg, metavar="THREAD", help="the group: 2 or #2")
    g.set_defaults(fn=cmd_group)

    st = command("status", "who is online, and last seen: USER...")
    st.add_argument("users", nargs="+", metavar="USER", help="usernames (or phones)")
    st.set_defaults(fn=cmd_status)

    h = command("history", "a thread's messages, oldest first")
    h.add_argument(
        "target", metavar="USER|THREAD", help="a username (your direct thread), or 2 or #2"
    )
    h.add_argument(
        "--limit",
        type=int,
        default=50,
        metavar="N",
        help="the newest N messages (default: %(default)s)",
    )
    h.add_argument(
        "--at",
        type=int,
        metavar="SEQ",
        help="messages around SEQ (a search hit), marked with > (default: the newest)",
    )
    h.add_argument(
        "--raw",
        action="store_true",
        help="every entry of the log, reactions, edits and deletes too (default: folded)",
    )
    h.set_defaults(fn=cmd_history)

    rd = command("read", "mark USER|THREAD read up to its newest message")
    rd.add_argument(
        "target", metavar="USER|THREAD", help="a username (your direct thread), or 2 or #2"
    )
    rd.set_defaults(fn=cmd_read)

    li = command("listen", "print what this device missed, then incoming events")
    li.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="exit after N messages from others (default: %(default)s, no limit)",
    )
    li.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="exit after S seconds (default: %(default)g, no limit)",
    )
    li.set_defaults(fn=cmd_listen)
    return p


def files_flags(cp: argparse.ArgumentParser) -> None:
    cp.add_argument(
        "--file",
        action="append",
        metavar="PATH",
        help="attach a file (photo, document, recording); repeat for more (default: none)",
    )
    cp.add_argument(
        "--voice", action="store_true", help="the file is a voice note (default: an audio file)"
    )
    cp.add_argument(
        "--duration-ms", type=int, default=0, metavar="MS", help="length of audio or video"
    )


def check_args(args: argparse.Namespace) -> None:
    """What argparse cannot say: a send needs a target and a text, add/rm need users."""
    command = getattr(args, "command", None)
    usage: argparse.ArgumentParser = args.parser
    if command == "send":
        if args.thread and args.user:
            # `send --thread 5 hello world` puts "hello" in `user`: it is the text's.
            args.text = [args.user, *args.text]
            args.user = None
        if not args.thread and not args.user:
            usage.error(
                "say who to send to: natter send USER TEXT..., "
                "or natter send --thread THREAD TEXT..."
            )
        if not args.text and not args.file:
            to = f"--thread {args.thread}" if args.thread else args.user
            usage.error(f"the message text is missing: natter send {to} TEXT... (or --file PATH)")
    elif command == "reply":
        if not args.text and not args.file:
            usage.error("the reply is missing: natter reply USER|THREAD SEQ TEXT...")
    elif command == "devices":
        if args.action == "logout" and not args.ids and not args.others:
            usage.error("say which: natter devices logout ID..., or natter devices logout --others")
        if args.action == "list" and (args.ids or args.others):
            usage.error("list takes no ids: natter devices [list]")
    elif command == "report":
        if args.seq and not args.thread:
            usage.error("--seq names messages of a thread: add --thread USER|THREAD")
        if not args.user and not args.seq:
            usage.error("say whom: natter report USER, or natter report --thread T --seq N")
    elif command == "contacts":
        if args.action in ("add", "rm") and not args.users:
            usage.error(
                f"name who to {'add' if args.action == 'add' else 'remove'}: "
                f"natter contacts {args.action} USER..."
            )
        if args.action == "list" and args.users:
            usage.error("list takes no users: natter contacts [list]")


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if (
        extra
        and getattr(args, "command", None) == "send"
        and not any(x.startswith("-") for x in extra)
    ):
        # `send bob --json hello world`: argparse takes positionals only up to the flag.
        args.text = [*args.text, *extra]
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    check_args(args)
    env = dict(os.environ)
    if args.command == "serve":
        malloc.limit_arenas(env)  # before the server's threads start: see app/malloc.py
    else:
        logging.basicConfig(level=logging.WARNING, format="natter: %(message)s")
    fn: Callable[[App], Awaitable[None]] = args.fn
    try:
        app = App(args, env)
        local = args.command == "admin" and bool(args.data or args.database_url or args.config)
        direct = args.command in ("serve", "backup") or local
        run(fn(app) if direct else talk(app, fn))
    except NatterError as e:
        print(f"natter: {e.message}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as e:
        print(f"natter: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


async def talk(app: App, fn: Callable[[App], Awaitable[None]]) -> None:
    """A command that talks to a server: a server that does not answer is said so plainly."""
    try:
        await fn(app)
    except ServerUnreachable:
        raise
    except (Unavailable, DeadlineExceeded):
        # The server's own UNAVAILABLE (its database restarting, say) has an answer behind it.
        if not await app.reachable():
            raise ServerUnreachable(app.server) from None
        raise


def run(coro: Awaitable[None]) -> None:
    async def runner() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())
