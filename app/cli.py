"""The `natter` command line: runs the server, and is a chat client built on the SDK."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from app.profiles import Profile, ProfileStore
from natter import convert, tls
from natter import domain as d
from natter import settings as settings_mod
from natter.errors import InvalidArgument, NatterError, Unauthenticated, Unavailable
from natter.sdk import Client, Connection, Disconnected, Rejected, SyncDone

DEFAULT_SERVER = "127.0.0.1:7070"
UNSUPPORTED = "unsupported message — update the app"


class Output:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def emit(self, obj: dict[str, Any], text: str) -> None:
        if self.json:
            print(json.dumps(obj, ensure_ascii=False, default=str), flush=True)
        else:
            print(text, flush=True)


def _time(value: datetime | None) -> str:
    return value.astimezone().isoformat(timespec="seconds") if value else ""


def message_obj(m: d.Message) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "message",
        "thread": m.thread_id,
        "seq": m.seq,
        "msg_id": m.msg_id,
        "from": m.sender.username,
        "text": m.text,
        "time": _time(m.create_time),
    }
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


def message_line(m: d.Message) -> str:
    obj = message_obj(m)
    state = f" ({obj['state']})" if "state" in obj else ""
    return f"[{obj['time']}] #{m.thread_id}:{m.seq} {m.sender.username}: {obj['text']}{state}"


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

    def client(self, authed: bool = True) -> Client:
        if authed and not self.profile.token:
            raise Unauthenticated(
                f"profile {self.args.profile!r} is not logged in; run: natter login USER"
            )
        server = (
            self.args.server
            or self.env.get("NATTER_SERVER")
            or self.profile.server
            or DEFAULT_SERVER
        )
        c = Client(
            server,
            self.profile.token if authed else "",
            timeout=self.args.rpc_timeout,
            credentials=self.credentials(),
        )
        if authed:
            c.user = d.User(self.profile.user_id, self.profile.username, self.profile.username)
            c.device_id = self.profile.device_id
        return c


async def resolve_thread(client: Client, target: str) -> int:
    if target.isdigit():
        return int(target)
    return int((await client.direct_thread(target)).thread_id)


# -- commands ------------------------------------------------------------------------------


async def cmd_register(app: App) -> None:
    async with app.client(authed=False) as c:
        user = await c.register(
            app.args.user, app.password(), app.args.name or "", app.args.phone or ""
        )
    app.out.emit(
        {"type": "registered", "user_id": user.user_id, "username": user.username},
        f"registered {user.username} (id {user.user_id})",
    )


async def cmd_login(app: App) -> None:
    device = app.args.device or f"cli-{app.args.profile}"
    async with app.client(authed=False) as c:
        token = await c.login(app.args.user, app.password(), device)
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
    async with app.client() as c:
        for dev in await c.devices():
            app.out.emit(
                {
                    "type": "device",
                    "device_id": dev.device_id,
                    "name": dev.name,
                    "current": dev.current,
                },
                f"{dev.device_id:>6}  {dev.name}{'  (this device)' if dev.current else ''}",
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


async def cmd_send(app: App) -> None:
    text = " ".join(app.args.text)
    async with app.client() as c:
        conn = Connection(c, skip_replay=True, auto_ack=False)
        await conn.start(wait_synced=False)
        try:
            if app.args.thread:
                res = await conn.send(text, thread_id=app.args.thread, timeout=app.args.timeout)
            else:
                if not app.args.user:
                    raise InvalidArgument("send needs USER or --thread THREAD")
                res = await conn.send(text, recipient=app.args.user, timeout=app.args.timeout)
        except TimeoutError:
            raise NatterError(
                f"not acknowledged within {app.args.timeout:g} s; the server may be down"
            ) from None
        finally:
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
                else last.text
            )
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
                },
                f"#{t.thread_id:<6} {kind:<6} {t.title:<24} "
                + (f"{t.member_count:>4} members " if kind == "group" else "")
                + f"unread {t.unread_count:<4} {preview[:40]}",
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
    async with app.client() as c:
        thread_id = await resolve_thread(c, app.args.target)
        rows, _ = await c.history(thread_id, limit=app.args.limit)
        for m in rows:
            app.out.emit(message_obj(m), message_line(m))


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


async def cmd_listen(app: App) -> None:
    count, timeout = app.args.count, app.args.timeout
    async with app.client() as c:
        conn = Connection(c, cursors=app.profile.cursors)
        await conn.start(wait_synced=False)
        seen = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            while count == 0 or seen < count:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    break
                try:
                    ev = await conn.next_event(left)
                except TimeoutError:
                    break
                if isinstance(ev, d.Message):
                    seen += 1
                    app.out.emit(message_obj(ev), message_line(ev))
                elif isinstance(ev, d.Receipt):
                    app.out.emit(
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
                    app.out.emit(
                        {
                            "type": "presence",
                            "user": ev.user.username,
                            "online": ev.online,
                            "last_seen": _time(ev.last_seen_time),
                        },
                        f"{ev.user.username} is {'online' if ev.online else 'offline'}",
                    )
                elif isinstance(ev, d.Typing):
                    app.out.emit(
                        {
                            "type": "typing",
                            "thread": ev.thread_id,
                            "user": ev.user.username,
                            "active": ev.active,
                        },
                        f"{ev.user.username} {'is typing' if ev.active else 'stopped typing'}"
                        f" in #{ev.thread_id}",
                    )
                elif isinstance(ev, SyncDone) and not app.args.json:
                    print(
                        f"-- in sync ({ev.replayed} missed messages shown) --",
                        file=sys.stderr,
                        flush=True,
                    )
                elif isinstance(ev, Disconnected) and ev.final:
                    raise Unauthenticated(ev.reason)
                elif isinstance(ev, Rejected):
                    print(f"natter: server refused a frame: {ev.message}", file=sys.stderr)
        finally:
            await conn.close()
            app.profile.cursors.update(conn.cursors)
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
        "etcd_endpoints": a.etcd,
        "node_id": a.node_id,
        "log_level": a.log_level,
        "tls_cert_file": a.tls_cert,
        "tls_key_file": a.tls_key,
    }
    cfg = settings_mod.load(overrides, app.env, Path(a.config) if a.config else None)
    await serve(cfg)


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


# -- parser --------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="natter", description="natter: instant messaging you run.")
    p.add_argument("--server", help="HOST:PORT of the server (env NATTER_SERVER)")
    p.add_argument(
        "--profile", default="default", help="one profile is one device (default: default)"
    )
    p.add_argument("--json", action="store_true", help="print JSON, one object per line")
    p.add_argument("--tls", action="store_true", help="connect with TLS (env NATTER_TLS=1)")
    p.add_argument(
        "--ca",
        help="PEM file of the CA that signed the server's certificate "
        "(env NATTER_CA; implies --tls)",
    )
    p.add_argument("--rpc-timeout", type=float, default=15.0, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server (embedded by default)")
    s.add_argument("--role", help="embedded (default), socket, message, channel or presence")
    s.add_argument("--data", help="data folder (default ./natter-data)")
    s.add_argument("--grpc", help="gRPC listen address (default 127.0.0.1:7070)")
    s.add_argument("--http", help="HTTP listen address (default 127.0.0.1:7080)")
    s.add_argument("--internal", help="internal listen address (cluster roles)")
    s.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in the data folder)")
    s.add_argument("--etcd", help="comma-separated etcd endpoints (cluster roles)")
    s.add_argument("--node-id", help="this node's id")
    s.add_argument("--config", help="TOML settings file (env NATTER_CONFIG)")
    s.add_argument("--log-level", help="DEBUG, INFO, WARNING")
    s.add_argument("--tls-cert", help="PEM certificate chain: serve gRPC and HTTP over TLS")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.set_defaults(fn=cmd_serve)

    b = sub.add_parser("backup", help="copy the embedded database to DEST while it runs")
    b.add_argument("dest", help="the new file to write")
    b.add_argument("--data", help="data folder (default ./natter-data)")
    b.add_argument("--database-url", help=argparse.SUPPRESS)
    b.add_argument("--config", help="TOML settings file (env NATTER_CONFIG)")
    b.set_defaults(fn=cmd_backup)

    r = sub.add_parser("register", help="create an account")
    r.add_argument("user")
    r.add_argument("--name", help="display name")
    r.add_argument("--phone", help="phone in E.164 form, e.g. +4915112345678")
    r.set_defaults(fn=cmd_register)

    lg = sub.add_parser("login", help="log this profile in as a new device")
    lg.add_argument("user")
    lg.add_argument("--device", help="device name")
    lg.set_defaults(fn=cmd_login)

    sub.add_parser("logout", help="log this device out").set_defaults(fn=cmd_logout)
    sub.add_parser("devices", help="list your devices").set_defaults(fn=cmd_devices)

    c = sub.add_parser("contacts", help="add, rm or list contacts")
    c.add_argument("action", choices=["add", "rm", "list"])
    c.add_argument("users", nargs="*")
    c.set_defaults(fn=cmd_contacts)

    se = sub.add_parser("send", help="send a message to USER or --thread THREAD")
    se.add_argument("--thread", type=int, help="thread id (groups)")
    se.add_argument("--timeout", type=float, default=30.0, help="give up after S seconds")
    se.add_argument("user", nargs="?")
    se.add_argument("text", nargs="+")
    se.set_defaults(fn=cmd_send)

    sub.add_parser("threads", help="your threads, latest first").set_defaults(fn=cmd_threads)

    g = sub.add_parser("group", help="create and manage groups")
    gs = g.add_subparsers(dest="action", required=True)
    gc = gs.add_parser("create", help="create a group: TITLE USER...")
    gc.add_argument("title")
    gc.add_argument("users", nargs="*")
    for action, what in (
        ("add", "add members"),
        ("rm", "remove members"),
        ("promote", "make members admins"),
        ("demote", "make admins members"),
    ):
        ga = gs.add_parser(action, help=f"{what} (admins only): THREAD USER...")
        ga.add_argument("thread", type=int)
        ga.add_argument("users", nargs="+")
    gl = gs.add_parser("leave", help="leave a group: THREAD")
    gl.add_argument("thread", type=int)
    gi = gs.add_parser("info", help="a group's title and members: THREAD")
    gi.add_argument("thread", type=int)
    g.set_defaults(fn=cmd_group)

    st = sub.add_parser("status", help="who is online, and last seen: USER...")
    st.add_argument("users", nargs="+")
    st.set_defaults(fn=cmd_status)

    h = sub.add_parser("history", help="a thread's messages")
    h.add_argument("target", help="username or thread id")
    h.add_argument("--limit", type=int, default=50)
    h.set_defaults(fn=cmd_history)

    rd = sub.add_parser("read", help="mark USER|THREAD read up to its newest message")
    rd.add_argument("target", help="username (direct thread) or thread id")
    rd.set_defaults(fn=cmd_read)

    li = sub.add_parser("listen", help="print incoming events")
    li.add_argument("--count", type=int, default=0, help="exit after N messages")
    li.add_argument("--timeout", type=float, default=0.0, help="exit after S seconds")
    li.set_defaults(fn=cmd_listen)
    return p


def _fix_send_args(args: argparse.Namespace) -> None:
    # `send --thread 5 hello world` puts "hello" in `user`; give it back to the text.
    if getattr(args, "command", None) == "send" and args.thread and args.user:
        args.text = [args.user, *args.text]
        args.user = None


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    _fix_send_args(args)
    env = dict(os.environ)
    if args.command != "serve":
        logging.basicConfig(level=logging.WARNING, format="natter: %(message)s")
    fn: Callable[[App], Awaitable[None]] = args.fn
    try:
        app = App(args, env)
        run(fn(app))
    except NatterError as e:
        print(f"natter: {e.message}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as e:
        print(f"natter: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def run(coro: Awaitable[None]) -> None:
    async def runner() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())
