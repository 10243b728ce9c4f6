"""The history checker: reads what clients did and saw, and says which guarantee broke, and where.

A history is the JSON-lines log that SDK connections write through a `Recorder`
(`natter/sdk/history.py`: send, transmit, sent, retry, refused, abandoned, hello, connect,
disconnect, push, show), plus the records of the program that drove them:

- `device` (`dev`, `user`, `user_id`, `device_id`): a device taking part;
- `thread` (`thread`, `members`: user ids, `kind`): who is in a conversation;
- `stored` (`thread`, `seq`, `msg_id`, `sender`, `sdev`, `key`, `text`): a row of the store
  read back at the end, and `audit` once the store was read;
- `note` (`text`): a fault injected or healed, shown in the timeline of an account.

`check(records)` verifies, in the manner of Jepsen's checkers, on the whole history:

1. every send acknowledged to its device (`sent`) is shown on every device of every member of
   its thread (**lost** otherwise), with the seq and msg_id it was acknowledged with, and is
   in the store at that place (**not stored**, **changed**);
2. no device shows a message twice (**duplicated**), and each device shows each thread's
   messages in seq order (**reordered**);
3. one (thread, seq) is one message wherever it appears (**conflict**);
4. every send, acknowledged or not (retried, refused for now, abandoned), is stored and shown
   at one place at most (**stored twice**); one refused for good appears nowhere
   (**refused but stored**);
5. one device's acknowledged sends into a thread have seqs in the order it sent them
   (**send order**: per-device FIFO).

`Verdict.report()` is a readable account: counts, then each violation with the message, the
device and what happened to it (its streams, its last position in the thread).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]

KINDS = (
    "lost",
    "not stored",
    "changed",
    "duplicated",
    "reordered",
    "conflict",
    "stored twice",
    "refused but stored",
    "send order",
)
EXAMPLES = 8  # violations of one kind spelled out in a report; the rest are counted


def read(path: Path) -> list[Record]:
    """The records of a JSON-lines history (a torn last line, from a kill, is skipped)."""
    out: list[Record] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def read_all(paths: Iterable[Path]) -> list[Record]:
    """Several histories (one per client process) as one, in time order within each."""
    out: list[Record] = []
    for p in paths:
        out.extend(read(p))
    return out


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class _Send:
    dev: str
    key: str
    text: str
    thread: int
    to: str
    t: float


@dataclass(frozen=True, slots=True)
class _Shown:
    t: float
    thread: int
    seq: int
    msg_id: str
    key: str
    text: str
    stream: int


@dataclass
class _Device:
    dev: str
    user_id: int = 0
    shows: list[_Shown] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)  # "#2 socket-1 at 3.1 s", disconnects
    stream: int = 0
    pushes: int = 0
    redundant: int = 0  # pushes of a (thread, seq) already pushed on the same stream


@dataclass
class Verdict:
    """What the checker found: `ok` when no guarantee broke."""

    violations: list[Violation]
    stats: dict[str, int]
    timeline: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations

    def of(self, kind: str) -> list[Violation]:
        return [v for v in self.violations if v.kind == kind]

    def report(self) -> str:
        s = self.stats
        lines = [
            "history: {devices} devices, {sends} sends ({acked} acknowledged, {retried} retried, "
            "{abandoned} abandoned, {refused} refused, {unanswered} unanswered), {shows} shown, "
            "{connects} connects, {redundant} redundant pushes dropped by clients".format(**s)
        ]
        if self.timeline:
            lines.append("faults: " + "; ".join(self.timeline))
        if self.ok:
            lines.append(
                "verdict: VALID — every acknowledged message shown on every member device once, "
                "in order; no send stored twice"
            )
            return "\n".join(lines)
        counts = {k: len(self.of(k)) for k in KINDS if self.of(k)}
        lines.append("verdict: INVALID — " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        for kind in counts:
            found = self.of(kind)
            lines.append(f"{kind.upper()} ({len(found)}):")
            lines += [f"  - {v.text}" for v in found[:EXAMPLES]]
            if len(found) > EXAMPLES:
                lines.append(f"  ... and {len(found) - EXAMPLES} more")
        return "\n".join(lines)


def _label(text: str, key: str) -> str:
    short = text if len(text) <= 40 else text[:37] + "..."
    return f"{short!r} (key {key[:12]})" if key else repr(short)


class _Checker:
    def __init__(self, records: Iterable[Record]) -> None:
        self.devices: dict[str, _Device] = {}
        self.members: dict[int, set[int]] = {}
        self.sends: dict[str, _Send] = {}
        self.order: dict[str, list[str]] = defaultdict(list)  # dev -> keys in send order
        self.acked: dict[str, list[tuple[float, str, int, int, str]]] = defaultdict(list)
        self.transmits: dict[str, int] = defaultdict(int)
        self.retries: dict[str, list[str]] = defaultdict(list)
        self.refused: dict[str, str] = {}
        self.abandoned: set[str] = set()
        self.stored: dict[tuple[int, int], Record] = {}
        self.audited = False
        self.timeline: list[str] = []
        self._pushed: dict[tuple[str, int], set[tuple[int, int]]] = defaultdict(set)
        for r in records:
            self._take(r)

    def _device(self, dev: str) -> _Device:
        d = self.devices.get(dev)
        if d is None:
            d = self.devices[dev] = _Device(dev)
        return d

    def _take(self, r: Record) -> None:
        op = r.get("op")
        t = float(r.get("t", 0.0))
        dev = str(r.get("dev", ""))
        if op == "device":
            self._device(dev).user_id = int(r["user_id"])
        elif op == "thread":
            self.members.setdefault(int(r["thread"]), set()).update(int(u) for u in r["members"])
        elif op == "send":
            key = str(r["key"])
            self.sends[key] = _Send(
                dev, key, str(r.get("text", "")), int(r.get("thread", 0)), str(r.get("to", "")), t
            )
            self.order[dev].append(key)
        elif op == "transmit":
            for key in r.get("keys", []):
                self.transmits[str(key)] += 1
        elif op == "sent":
            key = str(r["key"])
            self.acked[key].append((t, dev, int(r["thread"]), int(r["seq"]), str(r["msg_id"])))
        elif op == "retry":
            self.retries[str(r["key"])].append(f"{r.get('reason', '')} at {t:.2f} s")
        elif op == "refused":
            self.refused[str(r["key"])] = f"{r.get('reason', '')} (code {r.get('code', 0)})"
        elif op == "abandoned":
            self.abandoned.add(str(r["key"]))
        elif op == "hello":
            self._device(dev).stream = int(r.get("stream", 0))
        elif op == "connect":
            d = self._device(dev)
            d.stream = int(r.get("stream", d.stream))
            d.streams.append(f"#{d.stream} {r.get('node', '?')} at {t:.2f} s")
        elif op == "disconnect":
            self._device(dev).streams.append(f"cut at {t:.2f} s ({r.get('reason', '')})")
        elif op == "push":
            d = self._device(dev)
            d.pushes += 1
            seen = self._pushed[(dev, d.stream)]
            at = (int(r["thread"]), int(r["seq"]))
            if at in seen:
                d.redundant += 1
            seen.add(at)
        elif op == "show":
            d = self._device(dev)
            d.shows.append(
                _Shown(
                    t,
                    int(r["thread"]),
                    int(r["seq"]),
                    str(r.get("msg_id", "")),
                    str(r.get("key", "")),
                    str(r.get("text", "")),
                    d.stream,
                )
            )
        elif op == "stored":
            self.stored[(int(r["thread"]), int(r["seq"]))] = r
        elif op == "audit":
            self.audited = True
        elif op == "note":
            self.timeline.append(f"{r.get('text', '')} at {t:.2f} s")

    # -- the checks ----------------------------------------------------------------------

    def run(self) -> Verdict:
        out: list[Violation] = []
        out += self._screens()
        out += self._conflicts()
        out += self._once()
        out += self._lost()
        out += self._store()
        out += self._fifo()
        return Verdict(out, self._stats(), self.timeline)

    def _screens(self) -> Iterator[Violation]:
        """Per device: each (thread, seq) once, and each thread's seqs rising."""
        for d in self.devices.values():
            last: dict[int, _Shown] = {}
            seen: dict[tuple[int, int], _Shown] = {}
            for s in d.shows:
                first = seen.get((s.thread, s.seq))
                if first is not None:
                    yield Violation(
                        "duplicated",
                        f"{d.dev} showed thread {s.thread} seq {s.seq} {_label(s.text, s.key)} "
                        f"twice: at {first.t:.2f} s (stream #{first.stream}) and at "
                        f"{s.t:.2f} s (stream #{s.stream})",
                    )
                    continue
                seen[(s.thread, s.seq)] = s
                prev = last.get(s.thread)
                if prev is not None and s.seq < prev.seq:
                    yield Violation(
                        "reordered",
                        f"{d.dev} showed thread {s.thread} seq {s.seq} {_label(s.text, s.key)} "
                        f"at {s.t:.2f} s after seq {prev.seq} (at {prev.t:.2f} s)",
                    )
                if prev is None or s.seq > prev.seq:
                    last[s.thread] = s

    def _places(self) -> dict[tuple[int, int], list[tuple[str, str, str, str]]]:
        """(thread, seq) -> (msg_id, key, text, where) from acks, screens and the store."""
        at: dict[tuple[int, int], list[tuple[str, str, str, str]]] = defaultdict(list)
        for key, results in self.acked.items():
            send = self.sends.get(key)
            text = send.text if send else ""
            for t, dev, thread, seq, msg_id in results:
                at[(thread, seq)].append((msg_id, key, text, f"acknowledged to {dev} at {t:.2f} s"))
        for d in self.devices.values():
            for s in d.shows:
                at[(s.thread, s.seq)].append((s.msg_id, s.key, s.text, f"shown on {d.dev}"))
        for (thread, seq), r in self.stored.items():
            at[(thread, seq)].append(
                (str(r.get("msg_id", "")), str(r.get("key", "")), str(r.get("text", "")), "stored")
            )
        return at

    def _conflicts(self) -> Iterator[Violation]:
        for (thread, seq), seen in sorted(self._places().items()):
            ids = {m for m, _, _, _ in seen if m}
            if len(ids) > 1:
                ways = "; ".join(
                    f"{_label(text, key)} msg_id {m[:12]} {where}" for m, key, text, where in seen
                )
                yield Violation(
                    "conflict", f"thread {thread} seq {seq} is more than one message: {ways}"
                )

    def _once(self) -> Iterator[Violation]:
        """A client_msg_id at one (thread, seq) at most: else a retry (or two) stored twice."""
        places: dict[str, set[tuple[int, int]]] = defaultdict(set)
        for (thread, seq), seen in self._places().items():
            for _, key, _, _ in seen:
                if key:
                    places[key].add((thread, seq))
        for key, where in sorted(places.items()):
            send = self.sends.get(key)
            if len(where) > 1:
                yield Violation(
                    "stored twice",
                    f"send {_label(send.text if send else '', key)} from "
                    f"{send.dev if send else '?'} is at "
                    + ", ".join(f"thread {t} seq {s}" for t, s in sorted(where))
                    + f"; {self._fate(key)}",
                )
            if key in self.refused and key not in self.acked and where:
                t, s = min(where)
                yield Violation(
                    "refused but stored",
                    f"send {_label(send.text if send else '', key)} was refused for good "
                    f"({self.refused[key]}) yet is at thread {t} seq {s}",
                )

    def _fate(self, key: str) -> str:
        parts = [f"transmitted {self.transmits.get(key, 0)} times"]
        if self.retries.get(key):
            parts.append("refused for now: " + ", ".join(self.retries[key][:3]))
        if key in self.acked:
            parts.append(
                "acknowledged "
                + ", ".join(f"seq {seq} at {t:.2f} s" for t, _, _, seq, _ in self.acked[key])
            )
        elif key in self.abandoned:
            parts.append("abandoned unanswered")
        elif key in self.refused:
            parts.append(f"refused: {self.refused[key]}")
        else:
            parts.append("never answered")
        return "; ".join(parts)

    def _devices_of(self, thread: int, fallback: set[int]) -> list[_Device]:
        users = self.members.get(thread, fallback)
        return [d for d in self.devices.values() if d.user_id and d.user_id in users]

    def _lost(self) -> Iterator[Violation]:
        shown: dict[str, set[tuple[int, int]]] = {
            d.dev: {(s.thread, s.seq) for s in d.shows} for d in self.devices.values()
        }
        for key, results in sorted(self.acked.items(), key=lambda kv: kv[1][0][0]):
            t, dev, thread, seq, _ = results[0]
            sender = self.devices.get(dev)
            fallback = {sender.user_id} if sender else set()
            send = self.sends.get(key)
            for d in self._devices_of(thread, fallback):
                if (thread, seq) in shown[d.dev]:
                    continue
                yield Violation(
                    "lost",
                    f"{_label(send.text if send else '', key)} (thread {thread} seq {seq}) "
                    f"acknowledged to {dev} at {t:.2f} s was never shown on {d.dev}; "
                    f"{self._where(d, thread)}",
                )

    def _where(self, d: _Device, thread: int) -> str:
        mine = [s for s in d.shows if s.thread == thread]
        pos = (
            f"it showed thread {thread} up to seq {max(s.seq for s in mine)} "
            f"(last at {mine[-1].t:.2f} s)"
            if mine
            else f"it showed nothing of thread {thread}"
        )
        streams = ", ".join(d.streams[-4:]) or "it never connected"
        return f"{pos}; its streams: {streams}"

    def _store(self) -> Iterator[Violation]:
        if not self.audited:
            return
        for key, results in sorted(self.acked.items()):
            t, dev, thread, seq, msg_id = results[0]
            send = self.sends.get(key)
            row = self.stored.get((thread, seq))
            if row is None:
                yield Violation(
                    "not stored",
                    f"{_label(send.text if send else '', key)} acknowledged to {dev} at "
                    f"{t:.2f} s as thread {thread} seq {seq} is not in the store",
                )
            elif str(row.get("msg_id", "")) != msg_id or str(row.get("key", "")) != key:
                yield Violation(
                    "changed",
                    f"{_label(send.text if send else '', key)} acknowledged to {dev} as "
                    f"thread {thread} seq {seq} msg_id {msg_id[:12]}; the store has "
                    f"{_label(str(row.get('text', '')), str(row.get('key', '')))} "
                    f"msg_id {str(row.get('msg_id', ''))[:12]} there",
                )

    def _fifo(self) -> Iterator[Violation]:
        for dev, keys in self.order.items():
            last: dict[int, tuple[int, str]] = {}
            for key in keys:
                results = self.acked.get(key)
                if not results:
                    continue
                _, _, thread, seq, _ = results[0]
                prev = last.get(thread)
                if prev is not None and seq < prev[0]:
                    earlier = self.sends.get(prev[1])
                    send = self.sends[key]
                    yield Violation(
                        "send order",
                        f"{dev} sent {_label(earlier.text if earlier else '', prev[1])} before "
                        f"{_label(send.text, key)} into thread {thread}, but they got seqs "
                        f"{prev[0]} and {seq}",
                    )
                if prev is None or seq > prev[0]:
                    last[thread] = (seq, key)

    def _stats(self) -> dict[str, int]:
        answered = set(self.acked) | set(self.refused) | self.abandoned
        return {
            "devices": len(self.devices),
            "sends": len(self.sends),
            "acked": len(self.acked),
            "retried": sum(1 for k in self.sends if self.transmits.get(k, 0) > 1),
            "abandoned": len(self.abandoned - set(self.acked)),
            "refused": len(set(self.refused) - set(self.acked)),
            "unanswered": len(set(self.sends) - answered),
            "shows": sum(len(d.shows) for d in self.devices.values()),
            "connects": sum(
                1 for d in self.devices.values() for s in d.streams if s.startswith("#")
            ),
            "redundant": sum(d.redundant for d in self.devices.values()),
        }


def check(records: Iterable[Record]) -> Verdict:
    """Check a whole history; see the module's docstring for the guarantees."""
    return _Checker(records).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.history",
        description="Check client histories (JSON lines) for lost, duplicated, reordered messages.",
    )
    parser.add_argument("logs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    verdict = check(read_all(args.logs))
    print(verdict.report())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
