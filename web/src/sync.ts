// Client-side logic of the app, free of I/O: the outbox as shown, ticks, unread counts (ordering is the SDK's).
import { Merger as SdkMerger, newClientMsgId } from "@natter/client";
import { isEvent, mergeCopies } from "./fold";
import type { MemberInfo, Msg, Pending, ThreadInfo, Tick } from "./model";

export type { Gap } from "@natter/client";

/** The SDK's merger over the app's messages: each `(thread, seq)` once, in order, gaps reported. */
export class Merger extends SdkMerger<Msg> {}

/** Insert into a seq-ordered list, replacing a message with the same seq. */
export function insertMsg(list: Msg[], m: Msg): Msg[] {
  let i = list.length;
  while (i > 0 && list[i - 1].seq > m.seq) i--;
  if (i > 0 && list[i - 1].seq === m.seq) {
    const copy = list.slice();
    copy[i - 1] = mergeCopies(list[i - 1], m);
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

export { newClientMsgId };

/** The sends to put on the wire after (re)connecting: everything not refused, oldest first. */
export function toResend(outbox: Pending[]): Pending[] {
  // Changes (reactions, edits, deletes, forwards) go in the same order as messages.
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
  return ticker(meId, members)(m);
}

/** tickOf for many messages of one thread: the members' cursors are summed up once. */
export function ticker(meId: number, members: MemberInfo[] | undefined): (m: Msg) => Tick {
  const others = (members ?? []).filter((x) => x.person.id !== meId);
  const delivered = others.length ? Math.min(...others.map((x) => Math.max(x.delivered, x.read))) : 0;
  const read = others.length ? Math.min(...others.map((x) => x.read)) : 0;
  return (m) => {
    const tick = STATE_TICK[m.state] ?? "sent";
    if (others.length === 0) return tick;
    const fromReceipts: Tick = m.seq <= read ? "read" : m.seq <= delivered ? "delivered" : "sent";
    return RANK[fromReceipts] > RANK[tick] ? fromReceipts : tick;
  };
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
  return messages.filter((m) => m.seq > readSeq && m.sender.id !== meId && !m.system && !isEvent(m) && !m.hidden).length;
}

/** Threads for the list: newest activity first. */
export function orderThreads(threads: ThreadInfo[]): ThreadInfo[] {
  const at = (t: ThreadInfo) => Math.max(t.last?.time ?? 0, t.updated);
  return [...threads].sort((a, b) => at(b) - at(a) || b.id - a.id);
}
