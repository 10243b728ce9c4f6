"""The history checker (devtools/history.py): clean histories pass, planted violations are named.

The last tests record real SDK connections against a real server and check what they wrote.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from app.embedded import EmbeddedServer
from devtools.history import Record, check, main, read
from natter import domain as d
from natter.sdk import Client, Connection, JsonlRecorder
from tests.conftest import PASSWORD
from tests.helpers import collect, gather_events

ALICE, BOB = "alice/1", "bob/2"
BOB2 = "bob/3"  # bob's second device


class History:
    """A hand-written history: alice (user 1) and bob (users 2, two devices) in thread 7."""

    def __init__(self) -> None:
        self.records: list[Record] = [
            {"op": "device", "dev": ALICE, "user_id": 1, "t": 0},
            {"op": "device", "dev": BOB, "user_id": 2, "t": 0},
            {"op": "device", "dev": BOB2, "user_id": 2, "t": 0},
            {"op": "thread", "thread": 7, "members": [1, 2], "t": 0},
        ]
        for dev in (ALICE, BOB, BOB2):
            self.add("hello", dev, stream=1, cursors={})
            self.add("connect", dev, stream=1, node="socket-1")
        self.t = 1.0

    def add(self, op: str, dev: str = "", **fields: Any) -> None:
        self.t = getattr(self, "t", 0.0) + 0.01
        self.records.append({"op": op, "dev": dev, "t": self.t, **fields})

    def send(self, n: int, seq: int, *, ack: bool = True, show_on: tuple[str, ...] = ()) -> None:
        """alice sends message n, stored as seq; acknowledged, and shown where asked."""
        key = f"k{n}"
        self.add("send", ALICE, key=key, thread=7, text=f"m{n}")
        self.add("transmit", ALICE, stream=1, keys=[key])
        if ack:
            self.add("sent", ALICE, key=key, thread=7, seq=seq, msg_id=f"id{seq}")
            self.show(ALICE, seq, n)
        for dev in show_on:
            self.show(dev, seq, n)

    def show(self, dev: str, seq: int, n: int) -> None:
        self.add("push", dev, thread=7, seq=seq)
        self.add(
            "show", dev, thread=7, seq=seq, msg_id=f"id{seq}", sender=1, sdev=1, key=f"k{n}",
            text=f"m{n}",
        )  # fmt: skip

    def store(self, *rows: tuple[int, int]) -> None:
        for n, seq in rows:
            self.add(
                "stored", thread=7, seq=seq, msg_id=f"id{seq}", sender=1, sdev=1, key=f"k{n}",
                text=f"m{n}",
            )  # fmt: skip
        self.add("audit")


def clean(n: int = 3) -> History:
    h = History()
    for i in range(1, n + 1):
        h.send(i, i, show_on=(BOB, BOB2))
    h.store(*((i, i) for i in range(1, n + 1)))
    return h


def test_a_clean_history_is_valid() -> None:
    v = check(clean().records)
    assert v.ok, v.report()
    assert v.stats["acked"] == 3 and v.stats["shows"] == 9 and v.stats["devices"] == 3
    assert "VALID" in v.report()


def test_a_message_missing_on_one_device_is_lost() -> None:
    h = History()
    h.send(1, 1, show_on=(BOB, BOB2))
    h.send(2, 2, show_on=(BOB,))  # bob's second device never shows it
    h.send(3, 3, show_on=(BOB, BOB2))
    h.store((1, 1), (2, 2), (3, 3))
    v = check(h.records)
    [lost] = v.of("lost")
    assert "'m2'" in lost.text and "bob/3" in lost.text and "seq 2" in lost.text
    # The account says where that device stood: reordered, since it showed 3 after 1 ...
    assert "up to seq 3" in lost.text and "socket-1" in lost.text
    assert not v.ok and "INVALID" in v.report() and "1 lost" in v.report()


def test_a_message_shown_twice_is_duplicated() -> None:
    h = clean()
    h.add("disconnect", BOB, reason="UNAVAILABLE")
    h.add("hello", BOB, stream=2, cursors={7: 1})
    h.add("connect", BOB, stream=2, node="socket-2")
    h.show(BOB, 2, 2)  # replayed after a reconnect, and the client shows it again
    v = check(h.records)
    [dup] = v.of("duplicated")
    assert "bob/2" in dup.text and "seq 2" in dup.text and "stream #1" in dup.text
    assert "stream #2" in dup.text
    assert [x.kind for x in v.violations] == ["duplicated"]


def test_messages_shown_out_of_order_are_reordered() -> None:
    h = History()
    h.send(1, 1, show_on=(BOB, BOB2))
    h.send(2, 2, show_on=(BOB2,))
    h.send(3, 3, show_on=(BOB, BOB2))
    h.show(BOB, 2, 2)  # seq 2 after seq 3
    h.store((1, 1), (2, 2), (3, 3))
    v = check(h.records)
    [bad] = v.of("reordered")
    assert "bob/2" in bad.text and "seq 2" in bad.text and "after seq 3" in bad.text
    assert v.of("lost") == [] and v.of("duplicated") == []


def test_a_retried_send_stored_twice_is_found() -> None:
    h = clean(2)
    # alice's send 3 is refused for now, retried on a new stream, and the store keeps both.
    h.add("send", ALICE, key="k3", thread=7, text="m3")
    h.add("transmit", ALICE, stream=1, keys=["k3"])
    h.add("retry", ALICE, key="k3", code=14, reason="UNAVAILABLE")
    h.add("transmit", ALICE, stream=1, keys=["k3"])
    h.add("sent", ALICE, key="k3", thread=7, seq=4, msg_id="id4")
    h.show(ALICE, 4, 3)
    for dev in (BOB, BOB2):
        h.show(dev, 3, 3)
        h.show(dev, 4, 3)
    h.store((1, 1), (2, 2), (3, 3), (3, 4))
    v = check(h.records)
    [twice] = v.of("stored twice")
    assert "'m3'" in twice.text and "seq 3" in twice.text and "seq 4" in twice.text
    assert "transmitted 2 times" in twice.text and "UNAVAILABLE" in twice.text
    assert "acknowledged seq 4" in twice.text


def test_an_abandoned_send_stored_twice_is_found_and_stored_once_is_fine() -> None:
    h = clean(2)
    h.add("send", ALICE, key="k9", thread=7, text="m9")
    h.add("transmit", ALICE, stream=1, keys=["k9"])
    h.add("abandoned", ALICE, key="k9")
    for dev in (BOB, BOB2):
        h.show(dev, 3, 9)
    h.store((1, 1), (2, 2), (9, 3))
    assert check(h.records).ok  # at most once: once is fine
    h.show(BOB, 4, 9)
    h.store((9, 4))
    [twice] = check(h.records).of("stored twice")
    assert "abandoned unanswered" in twice.text


def test_two_messages_at_one_seq_conflict() -> None:
    h = clean(2)
    h.add("show", BOB2, thread=7, seq=2, msg_id="other", sender=2, sdev=2, key="x", text="split")
    v = check(h.records)
    assert [x.kind for x in v.of("conflict")] == ["conflict"]
    assert "thread 7 seq 2" in v.of("conflict")[0].text and "'split'" in v.of("conflict")[0].text


def test_an_acknowledged_send_missing_from_the_store() -> None:
    h = History()
    h.send(1, 1, show_on=(BOB, BOB2))
    h.send(2, 2, show_on=(BOB, BOB2))
    h.store((1, 1))
    [gone] = check(h.records).of("not stored")
    assert "'m2'" in gone.text and "seq 2" in gone.text


def test_sends_stored_against_their_order_break_fifo() -> None:
    h = History()
    h.send(1, 2, show_on=(BOB, BOB2))  # sent first, stored second
    h.send(2, 1, show_on=(BOB2,))
    v = check(h.records)
    [fifo] = v.of("send order")
    assert "'m1'" in fifo.text and "'m2'" in fifo.text and "seqs 2 and 1" in fifo.text


def test_a_send_refused_for_good_must_not_be_stored() -> None:
    h = clean(1)
    h.add("send", ALICE, key="k5", thread=7, text="m5")
    h.add("transmit", ALICE, stream=1, keys=["k5"])
    h.add("refused", ALICE, key="k5", code=3, reason="TEXT_TOO_LONG")
    h.show(BOB, 2, 5)
    [bad] = check(h.records).of("refused but stored")
    assert "TEXT_TOO_LONG" in bad.text


def test_the_command_line_reads_logs_and_exits_non_zero_on_violations(
    tmp_path: Path, capsys: Any
) -> None:
    import json

    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in clean().records) + '{"torn')
    h = History()
    h.send(1, 1, show_on=(BOB,))
    bad.write_text("".join(json.dumps(r) + "\n" for r in h.records))
    assert len(read(good)) == len(clean().records)  # the torn last line is skipped
    assert main([str(good)]) == 0
    assert main([str(bad)]) == 1
    assert "LOST (1)" in capsys.readouterr().out


# -- real connections ----------------------------------------------------------------------


async def test_real_connections_write_a_history_the_checker_accepts(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    log = tmp_path / "history.jsonl"
    rec = JsonlRecorder(log)
    clients = []
    for name, devices in (("hal", 1), ("ida", 2)):
        for i in range(devices):
            c = Client(server.grpc_address)
            if i == 0:
                await c.register(name, PASSWORD)
            await c.login(name, PASSWORD, f"d{i}")
            assert c.user is not None
            rec.record("device", dev=f"{name}/{c.device_id}", user_id=c.user.user_id)
            clients.append(c)
    hal, ida1, ida2 = (Connection(c, recorder=rec) for c in clients)
    for conn in (hal, ida1, ida2):
        await conn.start()
    first = await hal.send("hello ida", recipient="ida")
    rec.record(
        "thread",
        thread=first.thread_id,
        members=[c.user.user_id for c in clients[:2] if c.user is not None],
    )
    await asyncio.gather(*(hal.send(f"m{i}", thread_id=first.thread_id) for i in range(20)))
    for conn in (ida1, ida2):
        got = await collect(conn, 21)
        assert [m.seq for m in got] == list(range(1, 22))
    # hal takes its own messages too (what its screen shows).
    own = await gather_events(hal, lambda ev: isinstance(ev, d.Message), 21)
    assert [m.seq for m in own] == list(range(1, 22))
    for conn in (hal, ida1, ida2):
        await conn.close()
    rec.close()
    records = read(log)
    ops = {r["op"] for r in records}
    assert {"send", "transmit", "sent", "hello", "connect", "push", "show"} <= ops
    v = check(records)
    assert v.ok, v.report()
    assert v.stats["acked"] == 21 and v.stats["shows"] == 63
    # Drop one of ida's shows: the checker names the message and the device.
    dropped = next(r for r in records if r["op"] == "show" and r["seq"] == 9 and r["dev"] != "")
    lost = check([r for r in records if r is not dropped])
    assert [x.kind for x in lost.violations] == ["lost"]
    assert dropped["dev"] in lost.violations[0].text
    for c in clients:
        await c.close()
