"""Push notifications end to end: a real server, a real push service on loopback that checks
VAPID, TTL, Urgency and Topic and decrypts with the keys a browser would hold, and a
Matrix-style gateway. Grace period, foreground, mute, privacy mode, collapse, retries,
cleanup of gone targets, logout, group events, validation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.embedded import EmbeddedServer
from devtools.pushservice import PushService, Subscription
from natter import domain as d
from natter.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from natter.sdk import Client, Connection
from natter.settings import Settings
from tests.conftest import ConnFactory, UserFactory
from tests.conftest import test_settings as make_settings
from tests.helpers import eventually, next_of

GRACE = 1.0


@pytest.fixture
async def ps() -> AsyncIterator[PushService]:
    async with PushService() as service:
        yield service


@pytest.fixture
def settings(tmp_path: Path, store_url: str, message_log_url: str, ps: PushService) -> Settings:
    return push_settings(tmp_path / "data", ps, database_url=store_url, message_log=message_log_url)


def push_settings(data: Path, ps: PushService, **changes: object) -> Settings:
    base = make_settings(
        data,
        push_grace_seconds=GRACE,
        push_poll_seconds=0.05,
        push_allow_http=True,
        web_push_hosts=("127.0.0.1",),
        push_gateway_urls=(ps.gateway_url,),
        vapid_subject="mailto:ops@natter.test",
        heartbeat_interval_seconds=1.0,
    )
    return base.replace(**changes)


async def subscribe(ps: PushService, client: Client) -> Subscription:
    """What a browser does: subscribe with the server's key, register the subscription."""
    config = await client.push_config()
    sub = ps.subscribe(config.vapid_public_key)
    await client.set_web_push(sub.endpoint, sub.p256dh, sub.auth)
    return sub


async def drained(server: EmbeddedServer) -> None:
    """Every queued push handled: the queue is empty (retries would be rows in it)."""
    await eventually(lambda: _empty(server), timeout=15, message="push queue drained")


async def _empty(server: EmbeddedServer) -> bool:
    return not await server.store.push_jobs()


async def dm(sender: Connection, to: Client, text: str) -> d.SendResult:
    assert to.user is not None
    return await sender.send(text, recipient=to.user.username)


async def test_web_push_is_real_and_arrives_after_the_grace_period(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory, ps: PushService
) -> None:
    alice = await user("alice")
    bob = await user("bob", device="phone")
    await alice.update_settings(display_name="Alice")
    sub = await subscribe(ps, bob)
    conn = await connect(alice)
    sent = time.monotonic()
    res = await dm(conn, bob, "hello bob")
    await eventually(lambda: ps.of(sub), timeout=GRACE + 10, message="push arrived")
    [got] = ps.of(sub)
    assert ps.problems == []
    # Not before the grace period; well within it plus a second on a quiet machine (the
    # bench measures it), with slack here for a loaded one.
    assert GRACE <= got.at - sent < GRACE + 4
    p = got.payload
    assert p["sender"] == "Alice" and p["sender_username"] == "alice"
    assert p["text"] == "hello bob" and p["kind"] == "direct"
    assert (p["thread_id"], p["seq"], p["count"]) == (res.thread_id, res.seq, 1)
    assert p["url"] == f"/#/chat/{res.thread_id}"
    assert got.size in (1024, 2048, 3072, 3993), "padded to a bucket"
    # RFC 8030 headers and an RFC 8292 token the push service verified.
    assert got.ttl == 24 * 3600 and got.urgency == "high"
    assert 1 <= len(got.topic) <= 32
    assert got.claims["aud"] == ps.origin and got.claims["sub"] == "mailto:ops@natter.test"
    # One Topic per thread: the next push of the chat replaces this one while undelivered.
    await dm(conn, bob, "again")
    await eventually(lambda: len(ps.of(sub)) == 2, timeout=GRACE + 10)
    assert ps.of(sub)[1].topic == got.topic
    assert len(ps.pending[sub.sub_id]) == 1, "the second replaced the first (same Topic)"
    carol = await connect(await user("carol"))
    await dm(carol, bob, "another chat")
    await eventually(lambda: len(ps.of(sub)) == 3, timeout=GRACE + 10)
    assert ps.of(sub)[2].topic != got.topic
    assert len(ps.pending[sub.sub_id]) == 2


async def test_no_push_for_own_messages_or_to_active_devices(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory, ps: PushService
) -> None:
    alice = await user("alice")
    alice_phone = await user("alice", device="phone")
    bob = await user("bob")
    own = await subscribe(ps, alice_phone)
    in_front = await subscribe(ps, bob)
    conn = await connect(alice)
    bob_conn = await connect(bob, foreground=True)
    await eventually(
        lambda: server.presence.tracker.active(bob.device_id, bob.user.user_id if bob.user else 0)
    )
    await dm(conn, bob, "you are looking at it")
    await drained(server)
    assert ps.of(own) == [], "nobody is notified of their own message"
    assert ps.of(in_front) == [], "an app in the foreground with a live stream is not notified"
    assert server.push.worker is not None and server.push.worker.stats.skipped_active >= 1
    # The same stream, app sent to the background (a hidden tab): notified, and the message
    # still arrives live.
    await bob_conn.set_foreground(False)
    await eventually(
        lambda: (
            not server.presence.tracker.active(bob.device_id, bob.user.user_id if bob.user else 0)
        )
    )
    await dm(conn, bob, "now in the background")
    await eventually(lambda: ps.of(in_front), timeout=GRACE + 10)
    assert ps.of(in_front)[0].payload["text"] == "now in the background"
    live = await next_of(bob_conn, d.Message)
    assert isinstance(live, d.Message)
    assert ps.of(own) == []


async def test_a_device_back_in_the_foreground_within_the_grace_period_is_not_notified(
    tmp_path: Path, ps: PushService, user: UserFactory, connect: ConnFactory
) -> None:
    # A longer grace so the reconnect surely lands inside it.
    settings = push_settings(tmp_path / "d2", ps, push_grace_seconds=3.0)
    async with EmbeddedServer(settings) as server:
        alice = await user("alice", address=server.grpc_address)
        bob = await user("bob", address=server.grpc_address)
        sub = await subscribe(ps, bob)
        conn = await connect(alice)
        await dm(conn, bob, "one")
        await connect(bob, foreground=True)  # the phone wakes up and opens the app
        await drained(server)
        assert ps.of(sub) == []
        assert server.push.worker is not None and server.push.worker.stats.skipped_active == 1


async def test_read_on_another_device_within_the_grace_period_is_not_notified(
    tmp_path: Path, ps: PushService, user: UserFactory, connect: ConnFactory
) -> None:
    settings = push_settings(tmp_path / "d3", ps, push_grace_seconds=3.0)
    async with EmbeddedServer(settings) as server:
        alice = await user("alice", address=server.grpc_address)
        bob_phone = await user("bob", address=server.grpc_address, device="phone")
        bob_laptop = await user("bob", address=server.grpc_address, device="laptop")
        sub = await subscribe(ps, bob_phone)
        conn = await connect(alice)
        res = await dm(conn, bob_laptop, "read it on the laptop")
        laptop = await connect(bob_laptop)
        await laptop.read(res.thread_id, res.seq)
        await drained(server)
        assert ps.of(sub) == []


async def test_a_burst_of_50_gives_one_notification_per_chat(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory, ps: PushService
) -> None:
    alice = await user("alice")
    bob = await user("bob")
    carol = await user("carol")
    sub = await subscribe(ps, bob)
    conn = await connect(alice)
    assert bob.user is not None and carol.user is not None
    group = await alice.create_group("Weekend", [bob.user.username, carol.user.username])
    await drained(server)
    assert len(ps.of(sub)) == 1, "bob was told he was added"
    assert ps.of(sub)[0].payload["system"] is True
    results = await asyncio.gather(
        *(conn.send(f"burst {i}", recipient=bob.user.username) for i in range(50))
    )
    await asyncio.gather(*(conn.send(f"g {i}", thread_id=group.thread_id) for i in range(50)))
    await drained(server)
    pushes = ps.of(sub)[1:]
    by_thread: dict[int, list[dict[str, object]]] = {}
    for r in pushes:
        by_thread.setdefault(int(r.payload["thread_id"]), []).append(r.payload)
    assert set(by_thread) == {results[0].thread_id, group.thread_id}
    assert len(pushes) == 2, f"one per chat, not {len(pushes)}"
    direct = by_thread[results[0].thread_id][0]
    assert direct["count"] == 50 and direct["text"] == "burst 49"
    grouped = by_thread[group.thread_id][0]
    assert grouped["count"] == 50 and grouped["title"] == "Weekend"
    assert ps.problems == []


async def test_muted_chats_are_not_notified_and_mutes_show_everywhere(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory, ps: PushService
) -> None:
    alice = await user("alice")
    bob = await user("bob", device="phone")
    bob_laptop = await user("bob", device="laptop")
    sub = await subscribe(ps, bob)
    conn = await connect(alice)
    laptop = await connect(bob_laptop)
    first = await dm(conn, bob, "before the mute")
    await eventually(lambda: ps.of(sub), timeout=GRACE + 10)
    muted = await bob.mute(first.thread_id)
    assert muted.muted and muted.mute_end_time is None  # forever
    event = await next_of(laptop, d.ThreadMute)
    assert event == d.ThreadMute(first.thread_id, True, None)
    [listed] = [t for t in await bob_laptop.threads() if t.thread_id == first.thread_id]
    assert listed.muted and not listed.HasField("mute_end_time")
    await dm(conn, bob, "while muted")
    await drained(server)
    assert len(ps.of(sub)) == 1
    # For a while: shown with its end, and over by itself.
    timed = await bob.mute(first.thread_id, timedelta(seconds=2))
    assert timed.mute_end_time is not None
    assert timedelta(seconds=1) < timed.mute_end_time - datetime.now(UTC) <= timedelta(seconds=2)
    await dm(conn, bob, "still muted")
    await drained(server)
    assert len(ps.of(sub)) == 1
    await eventually(
        lambda: _not_muted(bob, first.thread_id), timeout=10, message="the mute ran out"
    )
    await dm(conn, bob, "after the mute")
    await eventually(lambda: len(ps.of(sub)) == 2, timeout=GRACE + 10)
    assert ps.of(sub)[1].payload["text"] == "after the mute"
    # Unmute after a forever mute.
    await bob.mute(first.thread_id)
    unmuted = await bob.unmute(first.thread_id)
    assert not unmuted.muted
    with pytest.raises(InvalidArgument):
        await bob.mute(first.thread_id, timedelta(seconds=0))


async def _not_muted(client: Client, thread_id: int) -> bool:
    return not (await client.thread(thread_id)).thread.muted


@pytest.mark.parametrize(
    "preview", [d.NotificationPreview.SENDER_ONLY, d.NotificationPreview.HIDDEN]
)
async def test_privacy_mode_decides_what_the_push_carries(
    server: EmbeddedServer,
    user: UserFactory,
    connect: ConnFactory,
    ps: PushService,
    preview: d.NotificationPreview,
) -> None:
    alice = await user("alice")
    bob = await user("bob")
    bob_mobile = await user("bob", device="mobile")
    sub = await subscribe(ps, bob)
    config = await bob_mobile.push_config()
    await bob_mobile.set_push_gateway(config.gateway_urls[0], "org.natter.test", "token-bob")
    await bob.update_settings(notification_preview=preview)
    assert (await bob_mobile.me()).notification_preview == int(preview.value)
    conn = await connect(alice)
    await dm(conn, bob, "secret plans")
    await eventually(lambda: ps.of(sub) and ps.to("token-bob"), timeout=GRACE + 10)
    web = ps.of(sub)[0].payload
    note = ps.to("token-bob")[0].note
    assert "text" not in web and "content" not in note
    assert "secret" not in repr(web) and "secret" not in repr(note)
    if preview is d.NotificationPreview.SENDER_ONLY:
        assert web["sender_username"] == "alice" and note["sender"] == "alice"
    else:
        assert "sender" not in web and "sender" not in note and "room_name" not in note
        assert web["preview"] == "hidden" and note["event_id"] and note["room_id"]
    assert ps.problems == []


async def test_gateway_push_in_matrix_style_and_rejected_tokens_are_removed(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory, ps: PushService
) -> None:
    alice = await user("alice")
    await alice.update_settings(display_name="Alice")
    bob = await user("bob")
    config = await bob.push_config()
    await bob.set_push_gateway(config.gateway_urls[0], "org.natter.test", "token-1")
    conn = await connect(alice)
    res = await dm(conn, bob, "hi phone")
    await eventually(lambda: ps.to("token-1"), timeout=GRACE + 10)
    note = ps.to("token-1")[0].note
    assert note["event_id"] == res.msg_id and note["room_id"] == str(res.thread_id)
    assert note["sender_display_name"] == "Alice" and note["prio"] == "high"
    assert note["content"] == {"msgtype": "m.text", "body": "hi phone"}
    assert note["devices"][0]["app_id"] == "org.natter.test"
    assert note["counts"] == {"unread": 1}
    ps.rejected.add("token-1")
    await dm(conn, bob, "the app was uninstalled")
    await eventually(lambda: len(ps.to("token-1")) == 2, timeout=GRACE + 10)
    await eventually(lambda: _no_target(bob), message="rejected token removed")


async def _no_target(client: Client) -> bool:
    return await client.push_target() is None


@pytest.mark.parametrize("status", [404, 410])
async def test_a_subscription_the_push_service_says_is_gone_is_removed(
    server: EmbeddedServer,
    user: UserFactory,
    connect: ConnFactory,
    ps: PushService,
    status: int,
) -> None:
    alice = await user("alice")
    bob = await user("bob")
    sub = await subscribe(ps, bob)
    target = await bob.push_target()
    assert target is not None and target.web_push.endpoint == sub.endpoint
    assert target.web_push.p256dh == "" and target.web_push.auth == "", "keys never come back"
    ps.script(sub.sub_id, status)
    conn = await connect(alice)
    await dm(conn, bob, "anyone there?")
    await eventually(lambda: _no_target(bob), timeout=GRACE + 10, message="gone target removed")
    await drained(server)
    assert server.push.worker is not None and server.push.worker.stats.removed == 1
    assert ps.of(sub) == []


async def test_failures_are_retried_with_backoff_and_the_message_is_kept(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory, ps: PushService
) -> None:
    alice = await user("alice")
    bob = await user("bob")
    sub = await subscribe(ps, bob)
    ps.script(sub.sub_id, 500, 503)
    ps.script(sub.sub_id, 429, retry_after="1")
    conn = await connect(alice)
    sent = time.monotonic()
    res = await dm(conn, bob, "eventually")
    await eventually(lambda: ps.of(sub), timeout=GRACE + 30, message="pushed after retries")
    got = ps.of(sub)[0]
    assert got.payload["seq"] == res.seq
    # Three failures, then backoff of about 1 + 2 s and the 1 s Retry-After.
    assert got.at - sent >= GRACE + 0.8 + 1.6 + 1.0
    assert ps.requests == 4
    assert server.push.worker is not None and server.push.worker.stats.retried == 3
    await drained(server)
    # The store is still the truth: bob's history has it whatever the pushes did.
    rows, _ = await bob.history(res.thread_id)
    assert [m.text for m in rows] == ["eventually"]


async def test_pushes_are_given_up_after_the_last_try(
    tmp_path: Path, ps: PushService, user: UserFactory, connect: ConnFactory
) -> None:
    settings = push_settings(tmp_path / "d4", ps, push_max_attempts=2)
    async with EmbeddedServer(settings) as server:
        alice = await user("alice", address=server.grpc_address)
        bob = await user("bob", address=server.grpc_address)
        sub = await subscribe(ps, bob)
        ps.script(sub.sub_id, 500, 500, 500)
        conn = await connect(alice)
        await dm(conn, bob, "never pushed")
        await drained(server)
        assert ps.requests == 2 and ps.of(sub) == []
        assert server.push.worker is not None and server.push.worker.stats.given_up == 1


async def test_logout_removes_the_push_target(
    server: EmbeddedServer, user: UserFactory, ps: PushService
) -> None:
    bob = await user("bob")
    await subscribe(ps, bob)
    assert await bob.push_target() is not None
    device = bob.device_id
    await bob.logout()
    assert await server.store.get_push_target(device) is None


async def test_group_events_notify_only_whom_they_concern(
    server: EmbeddedServer, user: UserFactory, ps: PushService
) -> None:
    alice = await user("alice")
    bob = await user("bob")
    carol = await user("carol")
    assert bob.user is not None and carol.user is not None
    bob_sub = await subscribe(ps, bob)
    carol_sub = await subscribe(ps, carol)
    group = await alice.create_group("Book club", [bob.user.username])
    await drained(server)
    [added] = ps.of(bob_sub)
    assert added.payload["title"] == "Book club" and added.payload["system"] is True
    assert "created the group" in str(added.payload["text"]) or "alice" in str(
        added.payload["text"]
    )
    await alice.add_members(group.thread_id, [carol.user.username])
    await alice.rename_group(group.thread_id, "Reading club")  # concerns nobody
    await drained(server)
    assert len(ps.of(carol_sub)) == 1, "carol is told she was added"
    assert len(ps.of(bob_sub)) == 1, "bob is not told about carol, nor about the rename"
    await alice.remove_members(group.thread_id, [carol.user.username])
    await drained(server)
    assert len(ps.of(carol_sub)) == 2, "carol is told she was removed"
    assert len(ps.of(bob_sub)) == 1


def test_only_marked_kinds_notify() -> None:
    alice, bob = d.User(1, "alice", "Alice"), d.User(2, "bob", "Bob")
    now = datetime.now(UTC)

    def msg(kind: d.MessageKind, system: d.SystemEvent | None = None) -> d.Message:
        return d.Message(5, 1, "m", alice, 1, "c", kind, "x", now, system)

    assert d.notifies(msg(d.MessageKind.TEXT), bob.user_id)
    assert not d.notifies(msg(d.MessageKind.TEXT), alice.user_id)
    assert not d.notifies(msg(d.MessageKind.UNKNOWN), bob.user_id), "new kinds push nothing"
    renamed = d.SystemEvent(d.SystemKind.TITLE_CHANGED, alice, (), "t")
    assert not d.notifies(msg(d.MessageKind.SYSTEM, renamed), bob.user_id)
    added = d.SystemEvent(d.SystemKind.MEMBERS_ADDED, alice, (bob,))
    assert d.notifies(msg(d.MessageKind.SYSTEM, added), bob.user_id)
    assert not d.notifies(msg(d.MessageKind.SYSTEM, added), 3)
    assert not d.queues_push(d.MessageKind.UNKNOWN)


async def test_targets_are_checked_before_they_are_stored(
    server: EmbeddedServer, user: UserFactory, ps: PushService
) -> None:
    bob = await user("bob")
    config = await bob.push_config()
    assert config.web_push_enabled and len(config.vapid_public_key) == 87
    assert config.grace_seconds == GRACE
    good = ps.subscribe(config.vapid_public_key)
    with pytest.raises(PermissionDenied) as e:
        await bob.set_web_push("https://push.example.org/x", good.p256dh, good.auth)
    assert e.value.reason == "PUSH_HOST_NOT_ALLOWED"
    with pytest.raises(InvalidArgument) as e2:
        await bob.set_web_push("ftp://127.0.0.1/x", good.p256dh, good.auth)
    assert e2.value.reason == "BAD_PUSH_URL"
    with pytest.raises(InvalidArgument) as e3:
        await bob.set_web_push(good.endpoint, good.p256dh[:-4], good.auth)
    assert e3.value.reason == "BAD_PUSH_KEYS"
    with pytest.raises(InvalidArgument):
        await bob.set_web_push(good.endpoint, good.p256dh, "short")
    with pytest.raises(PermissionDenied) as e4:
        await bob.set_push_gateway("https://gw.example.org/notify", "app", "key")
    assert e4.value.reason == "GATEWAY_NOT_ALLOWED"
    with pytest.raises(InvalidArgument):
        await bob.set_push_gateway(config.gateway_urls[0], "bad app id!", "key")
    assert await bob.push_target() is None, "nothing stored"
    await bob.set_web_push(good.endpoint, good.p256dh, good.auth)
    await bob.set_push_gateway(config.gateway_urls[0], "org.natter.test", "tok")
    target = await bob.push_target()
    assert target is not None and target.WhichOneof("target") == "gateway", "replaced"
    await bob.delete_push_target()
    assert await bob.push_target() is None


async def test_https_only_and_no_gateway_by_default(tmp_path: Path, ps: PushService) -> None:
    settings = make_settings(tmp_path / "d5", web_push_hosts=("127.0.0.1",))
    async with EmbeddedServer(settings) as server:
        c = Client(server.grpc_address)
        await c.register("dora", "correct horse battery")
        await c.login("dora", "correct horse battery")
        sub = ps.subscribe((await c.push_config()).vapid_public_key)
        with pytest.raises(InvalidArgument):
            await c.set_web_push(sub.endpoint, sub.p256dh, sub.auth)  # http://
        with pytest.raises(FailedPrecondition):
            await c.set_push_gateway(ps.gateway_url, "app", "key")
        await c.close()


async def test_the_vapid_key_is_kept_across_restarts(tmp_path: Path, ps: PushService) -> None:
    settings = push_settings(tmp_path / "d6", ps)
    keys = []
    for _ in range(2):
        async with EmbeddedServer(settings) as server, Client(server.grpc_address) as c:
            keys.append((await c.push_config()).vapid_public_key)
    assert keys[0] == keys[1]


async def test_the_web_app_reaches_push_through_the_connect_gateway(
    server: EmbeddedServer, user: UserFactory, ps: PushService
) -> None:
    import aiohttp

    bob = await user("bob")
    base = f"http://127.0.0.1:{server.http_port}/natter.v1"
    headers = {"Authorization": f"Bearer {bob.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}.PushService/GetPushConfig", json={}) as r:
            config = await r.json()
        assert r.status == 200 and config["vapidPublicKey"]
        sub = ps.subscribe(config["vapidPublicKey"])
        body = {"webPush": {"endpoint": sub.endpoint, "p256dh": sub.p256dh, "auth": sub.auth}}
        async with http.post(f"{base}.PushService/SetPushTarget", json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["target"]["webPush"]["endpoint"] == sub.endpoint
        mute = {"threadId": (await bob.direct_thread("bob")).thread_id, "duration": "3600s"}
        async with http.post(f"{base}.ThreadService/MuteThread", json=mute, headers=headers) as r:
            assert r.status == 200, await r.text()
            thread = (await r.json())["thread"]
            assert thread["muted"] is True and "muteEndTime" in thread
        prefs = {"notificationPreview": "NOTIFICATION_PREVIEW_SENDER_ONLY"}
        async with http.post(
            f"{base}.AccountService/UpdateSettings", json=prefs, headers=headers
        ) as r:
            assert r.status == 200, await r.text()
    assert (await bob.me()).notification_preview == int(d.NotificationPreview.SENDER_ONLY.value)


def test_the_tracker_knows_which_devices_are_in_front() -> None:
    from presence_svc import Tracker

    now = [0.0]
    tracker = Tracker(3.0, clock=lambda: now[0])
    tracker.report("s1", [(1, 10, True), (1, 11, True)], foreground={10})
    assert tracker.active(10, 1) and not tracker.active(11, 1)
    tracker.report("s1", [(1, 10, True)])  # back in the background
    assert not tracker.active(10, 1)
    tracker.report("s1", [(1, 10, True)], foreground={10})
    now[0] = 3.5  # silent past the timeout: no longer a live stream
    assert not tracker.active(10, 1)
    assert not tracker.active(99, 1)
