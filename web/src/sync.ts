// Client-side delivery logic, free of I/O: ordering per thread, gaps, the outbox, ticks.
import type { MemberInfo, Msg, Pending, ThreadInfo, Tick } from "./model";

/** Messages (afterSeq, beforeSeq) of a thread are missing and must be fetched. */
export interface Gap {
  threadId: number;
  afterSeq: number;
  beforeSeq: number;
}

/**
 * Feed it every message from pushes, replays and history: it releases each exactly once,
 * in seq order per thread, and reports the gaps to fill (the port of natter/sdk/merge.py).
 */
export class Merger {
  readonly cursors: Record<number, number>;
  private held = new Map<number, Map<number, Msg>>();

  constructor(cursors: Record<number, number> = {}) {
    this.cursors = cursors;
  }

  offer(m: Msg): { released: Msg[]; gap: Gap | null } {
    let last = this.cursors[m.threadId];
    if (last === undefined) {
      // First sight of a thread this device has no cursor for: the server chose the start.
      last = m.seq - 1;
      this.cursors[m.threadId] = last;
    }
    if (m.seq <= last) return { released: [], gap: null };
    if (m.seq > last + 1) {
      let held = this.held.get(m.threadId);
      if (!held) this.held.set(m.threadId, (held = new Map()));
      held.set(m.seq, m);
      return { released: [], gap: { threadId: m.threadId, afterSeq: last, beforeSeq: m.seq } };
    }
    return { released: this.release(m), gap: null };
  }

  private release(m: Msg): Msg[] {
    const out = [m];
    this.cursors[m.threadId] = m.seq;
    const held = this.held.get(m.threadId);
    if (held) {
      for (;;) {
        const next = held.get(this.cursors[m.threadId] + 1);
        if (!next) break;
        held.delete(next.seq);
        out.push(next);
        this.cursors[m.threadId] = next.seq;
      }
      for (const seq of [...held.keys()]) if (seq <= this.cursors[m.threadId]) held.delete(seq);
      if (held.size === 0) this.held.delete(m.threadId);
    }
    return out;
  }

  pendingGap(threadId: number): Gap | null {
    const held = this.held.get(threadId);
    if (!held || held.size === 0) return null;
    return { threadId, afterSeq: this.cursors[threadId] ?? 0, beforeSeq: Math.min(...held.keys()) };
  }
}

/** Insert into a seq-ordered list, replacing a message with the same seq. */
export function insertMsg(list: Msg[], m: Msg): Msg[] {
  let i = list.length;
  while (i > 0 && list[i - 1].seq > m.seq) i--;
  if (i > 0 && list[i - 1].seq === m.seq) {
    const copy = list.slice();
    copy[i - 1] = { ...m, state: Math.max(m.state, list[i - 1].state) };
    return copy;
  }
  return [...list.slice(0, i), m, ...list.slice(i)];
}

// -- the outbox ------------------------------------------------------------------------------

/** google.rpc codes after which a send stays in the outbox and is sent again on reconnect. */
const RETRYABLE = new Set([4, 8, 13, 14]); // DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE

export function retryable(code: number): boolean {
  return RETRYABLE.has(code);
}

export const MAX_TEXT_BYTES = 64 * 1024;

export function textProblem(text: string, maxBytes = MAX_TEXT_BYTES): string {
  if (text.trim() === "") return "Type a message first.";
  const size = new TextEncoder().encode(text).length;
  if (size > maxBytes) {
    return `This message is ${size.toLocaleString("en")} bytes; the limit is ${maxBytes.toLocaleString("en")}.`;
  }
  return "";
}

export function newClientMsgId(): string {
  const c = globalThis.crypto;
  if (c && "randomUUID" in c) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/** The sends to put on the wire after (re)connecting: everything not refused, oldest first. */
export function toResend(outbox: Pending[]): Pending[] {
  return outbox.filter((p) => !p.failed).sort((a, b) => a.time - b.time);
}

export function settle(outbox: Pending[], clientMsgId: string): { outbox: Pending[]; done: Pending | null } {
  const done = outbox.find((p) => p.clientMsgId === clientMsgId) ?? null;
  return { outbox: done ? outbox.filter((p) => p !== done) : outbox, done };
}

export function refuse(outbox: Pending[], clientMsgId: string, code: number, why: string): Pending[] {
  if (retryable(code)) return outbox;
  return outbox.map((p) => (p.clientMsgId === clientMsgId ? { ...p, failed: why || "refused" } : p));
}

// -- ticks and unread counts -----------------------------------------------------------------

const STATE_TICK: Tick[] = ["sent", "sent", "delivered", "read"];
const RANK: Record<Tick, number> = { failed: -1, pending: 0, sent: 1, delivered: 2, read: 3 };

/** How far one's own message has got: the server's state, raised by receipts of every other member. */
export function tickOf(m: Msg, meId: number, members: MemberInfo[] | undefined): Tick {
  let tick = STATE_TICK[m.state] ?? "sent";
  const others = (members ?? []).filter((x) => x.person.id !== meId);
  if (others.length > 0) {
    const delivered = Math.min(...others.map((x) => Math.max(x.delivered, x.read)));
    const read = Math.min(...others.map((x) => x.read));
    const fromReceipts: Tick = m.seq <= read ? "read" : m.seq <= delivered ? "delivered" : "sent";
    if (RANK[fromReceipts] > RANK[tick]) tick = fromReceipts;
  }
  return tick;
}

/** Apply a receipt to a thread's member list (creating the member if unknown). */
export function applyReceipt(
  members: MemberInfo[],
  who: MemberInfo["person"],
  read: boolean,
  seq: number,
): MemberInfo[] {
  let found = false;
  const out = members.map((x) => {
    if (x.person.id !== who.id) return x;
    found = true;
    return read
      ? { ...x, read: Math.max(x.read, seq), delivered: Math.max(x.delivered, seq) }
      : { ...x, delivered: Math.max(x.delivered, seq) };
  });
  if (!found) out.push({ person: who, admin: false, delivered: seq, read: read ? seq : 0 });
  return out;
}

/** Unread messages from others after the read cursor, counted from what is loaded. */
export function unreadAfter(messages: Msg[], readSeq: number, meId: number): number {
  return messages.filter((m) => m.seq > readSeq && m.sender.id !== meId && !m.system).length;
}

/** Threads for the list: newest activity first. */
export function orderThreads(threads: ThreadInfo[]): ThreadInfo[] {
  const at = (t: ThreadInfo) => Math.max(t.last?.time ?? 0, t.updated);
  return [...threads].sort((a, b) => at(b) - at(a) || b.id - a.id);
}
