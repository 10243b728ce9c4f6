// Unit tests of the app's fold (edits, deletes, reactions onto stored messages), links and date labels.
import { describe, expect, it } from "vitest";
import { applyEvent, isEvent, isKnown, KIND, mergeCopies, reactionCounts } from "../src/fold";
import type { Msg } from "../src/model";
import { insertMsg, unreadAfter } from "../src/sync";
import { dayLabel } from "../src/ui/format";
import { blurColour, safeHref } from "../src/ui/Rich";

const alice = { id: 1, username: "alice", name: "Alice" };
const bob = { id: 2, username: "bob", name: "Bob" };
const carol = { id: 3, username: "carol", name: "Carol" };

function m(seq: number, extra: Partial<Msg> = {}): Msg {
  return { threadId: 7, seq, msgId: `m${seq}`, sender: alice, senderDevice: 1, clientMsgId: "", system: null, text: `text ${seq}`, time: seq * 1000, state: 1, kind: KIND.TEXT, ...extra };
}

const edit = (seq: number, text: string) => m(seq, { kind: KIND.EDIT, targetSeq: 1, text });
const react = (seq: number, who: typeof bob, emoji: string) => m(seq, { kind: KIND.REACTION, targetSeq: 1, sender: who, emoji, text: "" });
const del = (seq: number) => m(seq, { kind: KIND.DELETE, targetSeq: 1, text: "" });

function fold(events: Msg[]): Msg {
  return events.reduce(applyEvent, m(1));
}

describe("folding events onto messages", () => {
  it("the newest edit wins in any order, and marks the message edited", () => {
    const events = [edit(2, "v2"), edit(5, "v5"), edit(3, "v3")];
    for (const order of [events, [...events].reverse()]) {
      const out = fold(order);
      expect(out.text).toBe("v5");
      expect(out.editSeq).toBe(5);
    }
  });

  it("one reaction per member, the newest; an empty emoji removes it; counts per emoji", () => {
    const events = [react(2, bob, "👍"), react(3, carol, "👍"), react(4, bob, "❤️"), react(5, carol, ""), react(6, carol, "❤️")];
    const a = fold(events);
    const b = fold([...events].reverse());
    expect(reactionCounts(a)).toEqual([{ emoji: "❤️", count: 2, names: ["Bob", "Carol"] }]);
    expect(reactionCounts(b).map((c) => [c.emoji, c.count])).toEqual([["❤️", 2]]);
    expect(reactionCounts(fold([react(2, bob, "👍"), react(3, bob, "")]))).toEqual([]);
  });

  it("a delete is for good: text, files and reactions gone, later edits ignored", () => {
    const out = fold([react(2, bob, "👍"), del(3), edit(4, "back")]);
    expect(out).toMatchObject({ deleted: true, text: "", attachments: [], reactions: {} });
  });

  it("a history copy folded by the server merges with what the device folded itself", () => {
    const mine = fold([edit(5, "v5"), react(6, bob, "👍")]);
    const older = m(1, { text: "v3", editSeq: 3, reactions: { 3: { person: carol, emoji: "😂", seq: 4 } } });
    const merged = mergeCopies(mine, older);
    expect(merged.text).toBe("v5");
    expect(reactionCounts(merged).map((c) => c.emoji).sort()).toEqual(["👍", "😂"]);
    expect(mergeCopies(m(1, { hidden: true }), m(1)).hidden).toBe(true);
    expect(mergeCopies(m(1), m(1, { deleted: true })).deleted).toBe(true);
    expect(insertMsg([mine], older)[0].text).toBe("v5");
  });

  it("events and hidden messages are not unread; unknown kinds are known to be unknown", () => {
    expect(isEvent(react(2, bob, "👍"))).toBe(true);
    expect(isEvent(m(1))).toBe(false);
    expect(isKnown(m(9, { kind: 42 }))).toBe(false);
    expect(isKnown(m(9, { kind: KIND.ATTACHMENT }))).toBe(true);
    expect(isKnown({ ...m(9), kind: undefined })).toBe(true); // saved by an older build: text
    const list = [m(1, { sender: bob }), react(2, bob, "👍"), m(3, { sender: bob, hidden: true }), m(4, { sender: bob })];
    expect(unreadAfter(list, 0, alice.id)).toBe(2);
  });
});

describe("what bubbles show", () => {
  it("only http, https and mailto links", () => {
    expect(safeHref("https://example.com/a?b=1")).toBe("https://example.com/a?b=1");
    expect(safeHref("mailto:a@example.com")).toBe("mailto:a@example.com");
    expect(safeHref("javascript:alert(1)")).toBeNull();
    expect(safeHref("data:text/html,<b>")).toBeNull();
    expect(safeHref("http://example.com).")).toBe("http://example.com/");
  });

  it("date separators say Today, Yesterday, a weekday, else the date", () => {
    const now = new Date(2026, 11, 10, 15, 0).getTime();
    expect(dayLabel(new Date(2026, 11, 10, 0, 5).getTime(), now)).toBe("Today");
    expect(dayLabel(new Date(2026, 11, 9, 23, 55).getTime(), now)).toBe("Yesterday");
    expect(dayLabel(new Date(2026, 11, 7, 12).getTime(), now)).not.toMatch(/Today|Yesterday|2026/);
    expect(dayLabel(new Date(2025, 0, 2, 12).getTime(), now)).toMatch(/2025/);
  });

  it("the BlurHash's average colour paints before the image loads", () => {
    expect(blurColour("LEHV6nWB2yk8pyo0adR*.7kCMdnj")).toMatch(/^#[0-9a-f]{6}$/);
    expect(blurColour("")).toBe("#dfe7e3");
  });
});
