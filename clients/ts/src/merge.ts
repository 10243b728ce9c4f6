// Client-side ordering: each message surfaces once, in seq order per thread, gaps detected.

/** What the merger needs of a message: its thread and its position in it. */
export interface Ordered {
  threadId: number | bigint;
  seq: number | bigint;
}

/** Messages (afterSeq, beforeSeq) of a thread are missing and must be fetched. */
export interface Gap {
  threadId: number;
  afterSeq: number;
  beforeSeq: number;
}

/**
 * Feed it every message from pushes, replays and history: it releases each `(thread, seq)`
 * exactly once, in seq order per thread, and reports the gaps to fill. A message of a kind this
 * SDK does not know is ordered like any other (every entry of a thread's log has a seq).
 */
export class Merger<M extends Ordered> {
  readonly cursors: Record<number, number>;
  private held = new Map<number, Map<number, M>>();

  constructor(cursors: Record<number, number> = {}) {
    this.cursors = cursors;
  }

  offer(m: M): { released: M[]; gap: Gap | null } {
    const threadId = Number(m.threadId);
    const seq = Number(m.seq);
    let last = this.cursors[threadId];
    if (last === undefined) {
      // First sight of a thread this device has no cursor for: the server chose the start.
      last = seq - 1;
      this.cursors[threadId] = last;
    }
    if (seq <= last) return { released: [], gap: null };
    if (seq > last + 1) {
      let held = this.held.get(threadId);
      if (!held) this.held.set(threadId, (held = new Map()));
      held.set(seq, m);
      return { released: [], gap: { threadId, afterSeq: last, beforeSeq: seq } };
    }
    return { released: this.release(threadId, m), gap: null };
  }

  private release(threadId: number, m: M): M[] {
    const out = [m];
    this.cursors[threadId] = Number(m.seq);
    const held = this.held.get(threadId);
    if (held) {
      for (;;) {
        const next = held.get(this.cursors[threadId] + 1);
        if (!next) break;
        held.delete(Number(next.seq));
        out.push(next);
        this.cursors[threadId] = Number(next.seq);
      }
      for (const seq of [...held.keys()]) if (seq <= this.cursors[threadId]) held.delete(seq);
      if (held.size === 0) this.held.delete(threadId);
    }
    return out;
  }

  /** Seqs up to `seq` will never arrive (not visible to this member): move past them. */
  skipTo(threadId: number, seq: number): M[] {
    if (seq <= (this.cursors[threadId] ?? 0)) return [];
    this.cursors[threadId] = seq;
    const held = this.held.get(threadId);
    if (!held) return [];
    for (const s of [...held.keys()]) if (s <= seq) held.delete(s);
    const next = held.get(seq + 1);
    if (next) held.delete(seq + 1);
    if (held.size === 0) this.held.delete(threadId);
    return next ? this.release(threadId, next) : [];
  }

  pendingGap(threadId: number): Gap | null {
    const held = this.held.get(threadId);
    if (!held || held.size === 0) return null;
    return { threadId, afterSeq: this.cursors[threadId] ?? 0, beforeSeq: Math.min(...held.keys()) };
  }
}
