"""Client-side ordering: each message surfaces once, in seq order per thread, gaps detected."""

from __future__ import annotations

from dataclasses import dataclass, field

from natter.domain import Message


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages (after_seq, before_seq) of a thread are missing and must be fetched."""

    thread_id: int
    after_seq: int
    before_seq: int


@dataclass
class Merger:
    """Feed it every message from pushes, replays and history; it releases each exactly once."""

    cursors: dict[int, int] = field(default_factory=dict)
    held: dict[int, dict[int, Message]] = field(default_factory=dict)

    def offer(self, m: Message) -> tuple[list[Message], Gap | None]:
        last = self.cursors.get(m.thread_id)
        if last is None:
            # First sight of a thread this device has no cursor for: the server chose the start.
            last = m.seq - 1
            self.cursors[m.thread_id] = last
        if m.seq <= last:
            return [], None
        if m.seq > last + 1:
            self.held.setdefault(m.thread_id, {})[m.seq] = m
            return [], Gap(m.thread_id, last, m.seq)
        return self._release(m), None

    def _release(self, m: Message) -> list[Message]:
        out = [m]
        self.cursors[m.thread_id] = m.seq
        held = self.held.get(m.thread_id)
        while held:
            nxt = held.pop(self.cursors[m.thread_id] + 1, None)
            if nxt is None:
                break
            out.append(nxt)
            self.cursors[m.thread_id] = nxt.seq
        if held is not None:
            for seq in [s for s in held if s <= self.cursors[m.thread_id]]:
                del held[seq]
            if not held:
                del self.held[m.thread_id]
        return out

    def skip_to(self, thread_id: int, seq: int) -> list[Message]:
        """Seqs up to `seq` will never arrive (not visible to this member): move past them."""
        if seq <= self.cursors.get(thread_id, 0):
            return []
        self.cursors[thread_id] = seq
        held = self.held.get(thread_id, {})
        for s in [s for s in held if s <= seq]:
            del held[s]
        nxt = held.pop(seq + 1, None)
        if not held:
            self.held.pop(thread_id, None)
        return self._release(nxt) if nxt is not None else []

    def pending_gap(self, thread_id: int) -> Gap | None:
        held = self.held.get(thread_id)
        if not held:
            return None
        return Gap(thread_id, self.cursors.get(thread_id, 0), min(held))
