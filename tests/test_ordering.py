"""Per-device FIFO: what one device sends into one thread is stored in the order it was sent —
naming the thread or the recipient, cold or warm, after a restart, across reconnects and
refusals, and in cluster mode with two message_svc replicas."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from app.embedded import EmbeddedServer
from message_svc.committer import GroupCommitter
from natter import domain as d
from natter.sdk import Client, Connected, Connection
from natter.v1 import socket_service_pb2 as spb
from tests.cluster import running_cluster
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.conftest import test_settings as make_settings
from tests.helpers import eventually
from tests.procs import RawStream

PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]

# A send as (client_msg_id, text, recipient, thread_id): exactly one target is set.
Send = tuple[str, str, str, int]


def frame(s: Send) -> spb.ClientFrame:
    key, text, recipient, thread_id = s
    out = spb.Send(client_msg_id=key, text=text)
    if recipient:
        out.recipient = recipient
    else:
        out.thread_id = thread_id
    return spb.ClientFrame(send=out)


def sends(tag: str, n: int, recipient: str = "", thread_id: int = 0) -> list[Send]:
    """n sends; with both a recipient and a thread they alternate between the two forms."""
    out: list[Send] = []
    for i in range(n):
        by_name = bool(recipient) and (not thread_id or i % 2 == 0)
        out.append(
            (f"{tag}-{i}", f"{tag} {i}", recipient if by_name else "", 0 if by_name else thread_id)
        )
    return out


async def pipelined(
    raw: RawStream, batch: Sequence[Send], timeout: float = 60.0
) -> dict[str, spb.SendResult | spb.StreamError]:
    """Write every send without waiting, then read until each has its answer."""
    for s in batch:
        await raw.write(frame(s))
    return await answers(raw, {s[0] for s in batch}, timeout)


async def answers(
    raw: RawStream, keys: set[str], timeout: float = 60.0
) -> dict[str, spb.SendResult | spb.StreamError]:
    got: dict[str, spb.SendResult | spb.StreamError] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < len(keys):
        f = await raw.read(max(0.01, deadline - loop.time()))
        which = f.WhichOneof("payload")
        if which == "send_result" and f.send_result.client_msg_id in keys:
            got[f.send_result.client_msg_id] = f.send_result
        elif which == "error" and f.error.client_msg_id in keys:
            got[f.error.client_msg_id] = f.error
    return got


def seqs_in_order(batch: Sequence[Send], got: dict[str, Any]) -> list[int]:
    """The seqs the sends got, in send order; every one must have been stored."""
    out = []
    for key, *_ in batch:
        r = got[key]
        assert isinstance(r, spb.SendResult), f"{key} was refused: {r}"
        out.append(r.seq)
    return out


async def stored_order(reader: Client, thread_id: int, prefix: str) -> list[str]:
    """The texts that start with prefix, in stored (seq) order."""
    return [m.text async for m in reader.all_history(thread_id) if m.text.startswith(prefix)]


def assert_fifo(batch: Sequence[Send], got: dict[str, Any]) -> None:
    seqs = seqs_in_order(batch, got)
    inversions = [(a, b) for a, b in itertools.pairwise(seqs) if a >= b]
    assert not inversions, f"seqs in send order: {seqs[:40]}... ({len(inversions)} inversions)"


async def account(address: str, name: str, device: str = "test", register: bool = True) -> Client:
    c = Client(address, timeout=20.0)
    if register:
        await c.register(name, PASSWORD)
    await c.login(name, PASSWORD, device)
    return c


# -- the group commit ----------------------------------------------------------------------


async def test_the_group_commit_keeps_submission_order_and_never_splits_a_run() -> None:
    flushed: list[list[str]] = []
    gate = asyncio.Event()

    async def flush(items: Sequence[str]) -> list[str]:
        flushed.append(list(items))
        if len(flushed) == 1:
            await gate.wait()  # the first transaction is slow: the others queue behind it
        return [f"{i}!" for i in items]

    committer: GroupCommitter[str, str] = GroupCommitter(flush, max_batch=5)
    runs = [
        ["a1"],
        ["b1", "b2", "b3"],
        ["c1", "c2"],
        ["a2", "a3"],
        ["d1"],
        ["b4", "b5", "b6", "b7", "b8", "b9"],
    ]
    tasks = [asyncio.ensure_future(committer.submit_many(runs[0]))]
    await eventually(lambda: flushed, 5)
    tasks += [asyncio.ensure_future(committer.submit_many(r)) for r in runs[1:]]
    await eventually(lambda: len(committer._pending) == len(runs) - 1, 5)  # all queued
    gate.set()
    results = await asyncio.gather(*tasks)
    assert results == [[f"{i}!" for i in r] for r in runs]
    # In submission order; a run that does not fit waits whole for the next transaction,
    # and one longer than a batch goes alone.
    assert flushed == [["a1"], ["b1", "b2", "b3", "c1", "c2"], ["a2", "a3", "d1"], runs[5]]


# -- one raw stream, pipelined -------------------------------------------------------------


@pytest.mark.parametrize("form", ["recipient", "thread_id"])
async def test_pipelined_sends_to_a_new_contact_are_stored_in_send_order(
    user: UserFactory, form: str
) -> None:
    alice, bob = await user(), await user()
    assert alice.user is not None and bob.user is not None
    thread_id = 0
    if form == "thread_id":
        thread_id = int((await alice.direct_thread(bob.user.username)).thread_id)
    raw = RawStream(alice)
    await raw.hello()
    batch = (
        sends("cold", 30, recipient=bob.user.username)
        if form == "recipient"
        else sends("cold", 30, thread_id=thread_id)
    )
    got = await pipelined(raw, batch)
    assert_fifo(batch, got)
    first = got[batch[0][0]]
    assert isinstance(first, spb.SendResult)
    assert await stored_order(bob, first.thread_id, "cold ") == [s[1] for s in batch]
    raw.cancel()


async def test_pipelined_sends_after_a_restart_are_stored_in_send_order(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    async with EmbeddedServer(settings) as srv:
        alice = await account(srv.grpc_address, "alice")
        bob = await account(srv.grpc_address, "bob")
        raw = RawStream(alice)
        await raw.hello()
        got = await pipelined(raw, sends("before", 1, recipient="bob"))
        raw.cancel()
        for c in (alice, bob):
            await c.close()
    # Every cache of the recipient's id and of the pair's thread is gone with the process.
    async with EmbeddedServer(settings) as srv:
        alice = await account(srv.grpc_address, "alice", register=False)
        bob = await account(srv.grpc_address, "bob", register=False)
        raw = RawStream(alice)
        await raw.hello()
        batch = sends("after", 30, recipient="bob")
        got = await pipelined(raw, batch)
        assert_fifo(batch, got)
        first = got[batch[0][0]]
        assert isinstance(first, spb.SendResult)
        assert await stored_order(bob, first.thread_id, "after ") == [s[1] for s in batch]
        raw.cancel()
        for c in (alice, bob):
            await c.close()


async def test_600_pipelined_sends_naming_thread_and_recipient_in_turn_keep_order(
    server: EmbeddedServer, user: UserFactory
) -> None:
    alice, bob = await user(), await user()
    assert bob.user is not None
    raw = RawStream(alice)
    await raw.hello()
    [(key, *_)] = warm = sends("warm", 1, recipient=bob.user.username)
    first = (await pipelined(raw, warm))[key]
    assert isinstance(first, spb.SendResult)
    session = server.hub.by_device[alice.device_id]
    runs = session.sends.runs
    # All 600 are on the wire before the first answer is read: many in flight at once.
    batch = sends("mixed", 600, recipient=bob.user.username, thread_id=first.thread_id)
    got = await pipelined(raw, batch)
    # Pipelined sends are handed over in runs, not one call (and transaction) each.
    assert session.sends.runs - runs < len(batch) / 2
    assert_fifo(batch, got)
    assert {r.thread_id for r in got.values() if isinstance(r, spb.SendResult)} == {first.thread_id}
    assert seqs_in_order(batch, got) == list(range(2, 602))
    assert await stored_order(bob, first.thread_id, "mixed ") == [s[1] for s in batch]
    raw.cancel()


async def test_two_devices_sending_into_one_thread_at_once_each_keep_their_order(
    user: UserFactory,
) -> None:
    phone = await user("alice", "phone")
    laptop = await user("alice", "laptop")
    bob = await user("bob")
    thread_id = int((await phone.direct_thread("bob")).thread_id)
    streams = [RawStream(c) for c in (phone, laptop, bob)]
    for raw in streams:
        await raw.hello()
    batches = [
        sends("phone", 200, recipient="bob", thread_id=thread_id),
        sends("laptop", 200, recipient="bob", thread_id=thread_id),
        sends("bob", 200, recipient="alice", thread_id=thread_id),
    ]
    results = await asyncio.gather(
        *(pipelined(r, b) for r, b in zip(streams, batches, strict=True))
    )
    for batch, got in zip(batches, results, strict=True):
        assert_fifo(batch, got)
    everything = await stored_order(bob, thread_id, "")
    assert len(everything) == 600
    for batch in batches:
        mine = [s[1] for s in batch]
        assert [t for t in everything if t in set(mine)] == mine
    for raw in streams:
        raw.cancel()


async def test_a_bad_send_in_a_pipeline_fails_alone(user: UserFactory) -> None:
    alice, bob, carol, dave = await user(), await user(), await user(), await user()
    assert bob.user is not None and carol.user is not None
    theirs = int((await carol.direct_thread(dave.user.username)).thread_id)  # type: ignore[union-attr]
    raw = RawStream(alice)
    await raw.hello()
    good = sends("ok", 6, recipient=bob.user.username)
    batch = [
        good[0],
        good[1],
        ("bad-thread", "not mine", "", theirs),
        good[2],
        ("bad-name", "nobody", "no-such-user", 0),
        good[3],
        ("bad-empty", "", bob.user.username, 0),
        good[4],
        good[5],
    ]
    got = await pipelined(raw, batch)
    refused = {k: r for k, r in got.items() if isinstance(r, spb.StreamError)}
    assert {k: (r.code, r.client_msg_id) for k, r in refused.items()} == {
        "bad-thread": (PERMISSION_DENIED, "bad-thread"),
        "bad-name": (NOT_FOUND, "bad-name"),
        "bad-empty": (grpc.StatusCode.INVALID_ARGUMENT.value[0], "bad-empty"),
    }
    assert_fifo(good, got)
    assert seqs_in_order(good, got) == list(range(1, 7))
    raw.cancel()


async def test_after_a_send_is_refused_for_now_later_ones_wait_for_it(tmp_path: Path) -> None:
    async with EmbeddedServer(make_settings(tmp_path, frames_per_second=20, frame_burst=5)) as srv:
        alice = await account(srv.grpc_address, "alice")
        bob = await account(srv.grpc_address, "bob")
        raw = RawStream(alice)
        await raw.hello()
        batch = sends("held", 10, recipient="bob")
        # One stream message: the frame budget (5) runs out in the middle of it.
        await raw.write(spb.ClientFrame(batch=spb.ClientBatch(frames=[frame(x) for x in batch])))
        got = await answers(raw, {x[0] for x in batch})
        stored = [x for x in batch if isinstance(got[x[0]], spb.SendResult)]
        refused = [x for x in batch if isinstance(got[x[0]], spb.StreamError)]
        assert stored == batch[: len(stored)] and refused == batch[len(stored) :] and refused
        assert {got[x[0]].reason for x in refused} == {"RATE_LIMITED"}  # type: ignore[union-attr]
        # Once the budget allows it again, a later send is still refused: it would overtake
        # the first refused one, which has not come again.
        later = refused[1]

        async def held_back() -> bool:
            await raw.write(frame(later))
            error = (await answers(raw, {later[0]}))[later[0]]
            assert isinstance(error, spb.StreamError), "a later send overtook a refused one"
            return "held back" in error.message

        await eventually(held_back, 20, interval=0.1)
        # Sent again in order from the first refused one, they are stored in that order.
        for x in refused:

            async def stored_now(x: Send = x) -> bool:
                await raw.write(frame(x))
                got[x[0]] = (await answers(raw, {x[0]}))[x[0]]
                return isinstance(got[x[0]], spb.SendResult)

            await eventually(stored_now, 20, interval=0.05)
        assert_fifo(batch, got)
        first = got[batch[0][0]]
        assert isinstance(first, spb.SendResult)
        assert await stored_order(bob, first.thread_id, "held ") == [x[1] for x in batch]
        raw.cancel()
        for c in (alice, bob):
            await c.close()


# -- the SDK -------------------------------------------------------------------------------


async def test_the_sdk_resends_its_outbox_in_order_after_a_cut_stream(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user(), await user()
    assert bob.user is not None
    conn = await connect(alice, max_backoff=0.3)
    thread_id = (await conn.send("start", recipient=bob.user.username)).thread_id
    texts = [f"sdk {i}" for i in range(400)]
    later = [f"sdk {i}" for i in range(400, 450)]
    tasks: list[asyncio.Task[d.SendResult]] = []
    put = conn.events.put

    async def spy(ev: Any) -> None:
        # The moment the connection is back, more is sent: it must queue behind the outbox.
        if isinstance(ev, Connected) and conn.stats.connects == 2:
            tasks.extend(asyncio.ensure_future(conn.send(t, thread_id=thread_id)) for t in later)
        await put(ev)

    conn.events.put = spy  # type: ignore[method-assign, assignment]
    for i, text in enumerate(texts):
        if i % 2:
            tasks.append(asyncio.ensure_future(conn.send(text, thread_id=thread_id)))
        else:
            tasks.append(asyncio.ensure_future(conn.send(text, recipient=bob.user.username)))
    await eventually(lambda: len(conn.outbox) < 300 and conn.in_flight, 30)
    assert conn._call is not None
    conn._call.cancel()  # a dropped network, with sends written and not yet answered
    await eventually(lambda: len(tasks) == len(texts) + len(later), 30)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert conn.stats.connects >= 2 and conn.stats.resends > 0
    assert [r.seq for r in results] == sorted(r.seq for r in results)
    assert await stored_order(bob, thread_id, "sdk ") == texts + later


async def test_sends_refused_by_the_rate_limit_are_stored_in_send_order(tmp_path: Path) -> None:
    async with EmbeddedServer(make_settings(tmp_path, frames_per_second=50, frame_burst=10)) as srv:
        alice = await account(srv.grpc_address, "alice")
        bob = await account(srv.grpc_address, "bob")
        conn = await Connection(alice, max_backoff=0.5).start()
        texts = [f"paced {i}" for i in range(80)]
        results = await asyncio.wait_for(
            asyncio.gather(*(conn.send(t, recipient="bob") for t in texts)), 60
        )
        assert conn.stats.extra.get("send_retry_RESOURCE_EXHAUSTED", 0) > 0  # some were refused
        assert [r.seq for r in results] == list(range(1, 81))
        assert await stored_order(bob, results[0].thread_id, "paced ") == texts
        await conn.close()
        for c in (alice, bob):
            await c.close()


# -- cluster mode --------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_pipelined_sends_keep_order_in_a_cluster_with_two_message_replicas(
    tmp_path: Path,
) -> None:
    async with running_cluster(tmp_path / "cluster", sockets=1, messages=2) as cluster:
        alice = await account(cluster.front_door, "alice")
        bob = await account(cluster.front_door, "bob")
        raw = RawStream(alice, await alice.locate("alice"))
        await raw.hello()
        cold = sends("cold", 30, recipient="bob")
        got = await pipelined(raw, cold)
        assert_fifo(cold, got)
        first = got[cold[0][0]]
        assert isinstance(first, spb.SendResult)
        batch = sends("mixed", 500, recipient="bob", thread_id=first.thread_id)
        got = await pipelined(raw, batch)
        assert_fifo(batch, got)
        assert await stored_order(bob, first.thread_id, "cold ") == [s[1] for s in cold]
        assert await stored_order(bob, first.thread_id, "mixed ") == [s[1] for s in batch]
        await raw.close()
        for c in (alice, bob):
            await c.close()
