// Typing indicators: the pacer on a clock of its own, and a fast typist against a real server.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TypingPacer, type Event } from "../src/index.js";
import { nodeConnection } from "../src/node.js";
import { NatterServer, nameOf, newUser, received, until } from "./support.js";

describe("the typing pacer", () => {
  it("repeats a start every 3 s at most, stops only after a start, and keeps to its budget", () => {
    let now = 0;
    const p = new TypingPacer(() => now);
    expect(p.start(1)).toBe(0);
    now = 2999;
    expect(p.start(1)).toBe(-1); // still announced
    now = 3000;
    expect(p.start(1)).toBe(0);
    expect(p.stop(1)).toBe(0);
    expect(p.stop(1)).toBe(-1); // nothing left to stop
    // A message ends it at the receivers: the next keystroke starts again, no stop needed.
    expect(p.start(2)).toBe(0);
    p.sent(2);
    expect(p.stop(2)).toBe(-1);
    // Budget: 3 at once, then 1 a second; over it, the frame waits for a token.
    const q = new TypingPacer(() => now);
    expect([q.start(1), q.start(2), q.start(3), q.start(4)]).toEqual([0, 0, 0, 1000]);
    expect(q.stop(1)).toBe(1000);
    now += 1000;
    expect(q.stop(1)).toBe(0);
    expect(q.start(4)).toBe(1000);
  });
});

const server = new NatterServer();
beforeAll(() => server.start());
afterAll(() => server.stop());

describe("typing against a real server", () => {
  it("a fast typist sending short messages back to back is never rate limited", async () => {
    const alice = await newUser(server.address, "alice");
    const bob = await newUser(server.address, "bob");
    await alice.addContact(nameOf(bob));
    await bob.addContact(nameOf(alice));
    const ca = await nodeConnection(alice).start();
    const cb = await nodeConnection(bob).start();
    const first = await ca.send("hi", { recipient: nameOf(bob) });
    const thread = Number(first.threadId);
    await received(cb, 1);
    // 12 chars a second (about 140 words a minute), 20 messages of 4 letters: the old app's
    // pacing (a start and a stop per message) sent 40 indicators in under 9 s.
    for (let m = 0; m < 20; m++) {
      for (let k = 0; k < 4; k++) {
        ca.typing(thread, true);
        await new Promise((r) => setTimeout(r, 83)); // the typist's pace, not a wait for anything
      }
      await ca.send(`m${m}`, { threadId: thread });
    }
    const last = await ca.send("done", { threadId: thread });
    const frames = ca.stats.typing;
    expect(frames).toBeGreaterThan(3);
    const seen = await until(cb, (e) => e.type === "message" && e.message.seq === last.seq, 30_000);
    expect(seen.filter((e) => e.type === "typing").length).toBe(frames);
    const refused: Event[] = [];
    while (ca.queued) {
      const ev = await ca.next(0);
      if (ev && ev.type === "rejected") refused.push(ev);
    }
    expect(refused).toEqual([]);
    await ca.close();
    await cb.close();
  });
});
