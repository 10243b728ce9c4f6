// Unit tests of the client's ordering, outbox and tick logic.
import { describe, expect, it } from "vitest";
import type { MemberInfo, Msg, Pending, ThreadInfo } from "../src/model";
import {
  applyReceipt,
  insertMsg,
  MAX_TEXT_BYTES,
  Merger,
  newClientMsgId,
  orderThreads,
  refuse,
  retryable,
  settle,
  textProblem,
  tickOf,
  toResend,
  unreadAfter,
} from "../src/sync";

const alice = { id: 1, username: "alice", name: "Alice" };
const bob = { id: 2, username: "bob", name: "Bob" };
const carol = { id: 3, username: "carol", name: "Carol" };

function m(threadId: number, seq: number, sender = bob, state = 0): Msg {
  return {
    threadId,
    seq,
    msgId: `m${threadId}-${seq}`,
    sender,
    senderDevice: sender.id * 10,
    clientMsgId: `c${seq}`,
    system: null,
    text: `text ${seq}`,
    time: 1000 * seq,
    state,
  };
}

const seqs = (list: Msg[]) => list.map((x) => x.seq);

describe("Merger", () => {
  it("releases in order and drops duplicates", () => {
    const merger = new Merger({ 7: 0 });
    expect(seqs(merger.offer(m(7, 1)).released)).toEqual([1]);
    expect(seqs(merger.offer(m(7, 2)).released)).toEqual([2]);
    expect(merger.offer(m(7, 2)).released).toEqual([]);
    expect(merger.offer(m(7, 1)).released).toEqual([]);
    expect(merger.cursors[7]).toBe(2);
  });

  it("holds messages after a gap and reports it, then releases when filled", () => {
    const merger = new Merger({ 7: 2 });
    const first = merger.offer(m(7, 5));
    expect(first.released).toEqual([]);
    expect(first.gap).toEqual({ threadId: 7, afterSeq: 2, beforeSeq: 5 });
    expect(merger.offer(m(7, 6)).gap).toEqual({ threadId: 7, afterSeq: 2, beforeSeq: 6 });
    expect(merger.pendingGap(7)).toEqual({ threadId: 7, afterSeq: 2, beforeSeq: 5 });
    expect(seqs(merger.offer(m(7, 3)).released)).toEqual([3]);
    expect(seqs(merger.offer(m(7, 4)).released)).toEqual([4, 5, 6]);
    expect(merger.pendingGap(7)).toBeNull();
    expect(merger.cursors[7]).toBe(6);
  });

  it("starts an unknown thread where the server chose", () => {
    const merger = new Merger();
    expect(seqs(merger.offer(m(9, 41)).released)).toEqual([41]);
    expect(merger.cursors[9]).toBe(41);
    expect(merger.offer(m(9, 43)).gap).toEqual({ threadId: 9, afterSeq: 41, beforeSeq: 43 });
  });

  it("keeps threads apart", () => {
    const merger = new Merger({ 1: 0, 2: 0 });
    merger.offer(m(1, 1));
    expect(merger.offer(m(2, 2)).gap?.threadId).toBe(2);
    expect(merger.cursors).toEqual({ 1: 1, 2: 0 });
  });

  it("shows each message exactly once across replay, push and history", () => {
    const merger = new Merger({ 4: 0 });
    const shown: number[] = [];
    const feed = (x: Msg) => shown.push(...seqs(merger.offer(x).released));
    [3, 1, 2, 2, 3, 5, 4, 1, 6, 5].forEach((s) => feed(m(4, s)));
    expect(shown).toEqual([1, 2, 3, 4, 5, 6]);
  });
});

describe("insertMsg", () => {
  it("keeps seq order, replaces by seq and never lowers the state", () => {
    let list: Msg[] = [];
    for (const s of [3, 1, 2, 5]) list = insertMsg(list, m(1, s));
    expect(seqs(list)).toEqual([1, 2, 3, 5]);
    list = insertMsg(list, m(1, 2, alice, 3));
    list = insertMsg(list, m(1, 2, alice, 1));
    expect(seqs(list)).toEqual([1, 2, 3, 5]);
    expect(list[1].state).toBe(3);
  });
});

describe("outbox", () => {
  const p = (id: string, time: number, failed = ""): Pending => ({ clientMsgId: id, threadId: 1, text: id, time, failed });

  it("resends everything not refused, oldest first, with the same client_msg_id", () => {
    const outbox = [p("b", 2), p("a", 1), p("x", 0, "too long")];
    expect(toResend(outbox).map((x) => x.clientMsgId)).toEqual(["a", "b"]);
  });

  it("settles on SendResult once", () => {
    const outbox = [p("a", 1), p("b", 2)];
    const first = settle(outbox, "a");
    expect(first.done?.clientMsgId).toBe("a");
    expect(first.outbox.map((x) => x.clientMsgId)).toEqual(["b"]);
    const again = settle(first.outbox, "a");
    expect(again.done).toBeNull();
    expect(again.outbox).toBe(first.outbox);
  });

  it("keeps retryable refusals and marks the others failed", () => {
    const outbox = [p("a", 1)];
    expect(refuse(outbox, "a", 14, "unavailable")).toEqual(outbox); // UNAVAILABLE
    expect(refuse(outbox, "a", 8, "slow down")).toEqual(outbox); // RESOURCE_EXHAUSTED: rate limit
    expect(refuse(outbox, "a", 3, "text too long")[0].failed).toBe("text too long");
    expect(refuse(outbox, "a", 7, "")[0].failed).toBe("refused");
    expect(retryable(13)).toBe(true);
    expect(retryable(16)).toBe(false);
  });

  it("refuses empty and oversized text before sending, counting UTF-8 bytes", () => {
    expect(textProblem("  ")).not.toBe("");
    expect(textProblem("hi")).toBe("");
    expect(textProblem("x".repeat(MAX_TEXT_BYTES))).toBe("");
    expect(textProblem("x".repeat(MAX_TEXT_BYTES + 1))).toContain("65,536");
    expect(textProblem("é".repeat(MAX_TEXT_BYTES / 2 + 1))).toContain("65,538");
  });

  it("makes unique idempotency keys", () => {
    const ids = new Set(Array.from({ length: 100 }, newClientMsgId));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id.length).toBeGreaterThan(0);
  });
});

describe("ticks", () => {
  const members = (d: number, r: number, d2?: number, r2?: number): MemberInfo[] => [
    { person: alice, admin: true, delivered: 99, read: 99 },
    { person: bob, admin: false, delivered: d, read: r },
    ...(d2 === undefined ? [] : [{ person: carol, admin: false, delivered: d2, read: r2 ?? 0 }]),
  ];

  it("follows the server's state and the peers' receipts, whichever is further", () => {
    expect(tickOf(m(1, 5, alice, 1), alice.id, undefined)).toBe("sent");
    expect(tickOf(m(1, 5, alice, 2), alice.id, undefined)).toBe("delivered");
    expect(tickOf(m(1, 5, alice, 1), alice.id, members(5, 0))).toBe("delivered");
    expect(tickOf(m(1, 5, alice, 1), alice.id, members(4, 4))).toBe("sent");
    expect(tickOf(m(1, 5, alice, 1), alice.id, members(6, 5))).toBe("read");
    expect(tickOf(m(1, 5, alice, 3), alice.id, members(0, 0))).toBe("read");
  });

  it("needs every other member of a group", () => {
    expect(tickOf(m(1, 5, alice, 1), alice.id, members(5, 5, 4, 0))).toBe("sent");
    expect(tickOf(m(1, 5, alice, 1), alice.id, members(5, 5, 5, 0))).toBe("delivered");
    expect(tickOf(m(1, 5, alice, 1), alice.id, members(5, 5, 5, 5))).toBe("read");
  });

  it("applies receipts without moving backwards; a read implies delivered", () => {
    let list = members(1, 0);
    list = applyReceipt(list, bob, false, 4);
    list = applyReceipt(list, bob, false, 2);
    expect(list[1]).toMatchObject({ delivered: 4, read: 0 });
    list = applyReceipt(list, bob, true, 6);
    expect(list[1]).toMatchObject({ delivered: 6, read: 6 });
    list = applyReceipt(list, carol, true, 3);
    expect(list.find((x) => x.person.id === carol.id)).toMatchObject({ delivered: 3, read: 3 });
  });
});

describe("lists", () => {
  it("counts unread from others after the read cursor", () => {
    const list = [m(1, 1), m(1, 2, alice), m(1, 3), m(1, 4)];
    expect(unreadAfter(list, 0, alice.id)).toBe(3);
    expect(unreadAfter(list, 3, alice.id)).toBe(1);
  });

  it("orders threads by last activity", () => {
    const t = (id: number, time: number): ThreadInfo => ({
      id, group: false, title: `t${id}`, peer: null, lastSeq: 1, readSeq: 0, unread: 0,
      last: { ...m(id, 1), time }, updated: 0, admin: false, members: 2, active: true,
    });
    expect(orderThreads([t(1, 10), t(2, 30), t(3, 20)]).map((x) => x.id)).toEqual([2, 3, 1]);
  });
});
