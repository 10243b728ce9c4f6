// Two people chatting through the TypeScript SDK under Node (native gRPC) against a real natter server.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NatterError, type Event, type NatterClient } from "../src/index.js";
import { nodeClient, nodeConnection } from "../src/node.js";
import { ReceiptKind } from "../src/v1.js";
import { NatterServer, PASSWORD, TcpProxy, eventually, nameOf, newUser, received, until } from "./support.js";

const server = new NatterServer();
beforeAll(() => server.start());
afterAll(() => server.stop());

/** How far the server has stored `username`'s delivered cursor in a thread. */
async function deliveredSeq(viewer: NatterClient, threadId: number, username: string): Promise<number> {
  const members = (await viewer.thread(threadId)).members;
  return Number(members.find((m) => m.user?.username === username)?.deliveredSeq ?? 0);
}

async function pair() {
  const alice = await newUser(server.address, "alice");
  const bob = await newUser(server.address, "bob");
  await alice.addContact(nameOf(bob));
  await bob.addContact(nameOf(alice));
  return { alice, bob };
}

describe("the TypeScript SDK against a real server", () => {
  it("two people register, log in, add each other and chat both ways in real time", async () => {
    const { alice, bob } = await pair();
    expect((await alice.contacts()).map((c) => c.user?.username)).toEqual([nameOf(bob)]);
    const ca = await nodeConnection(alice).start();
    const cb = await nodeConnection(bob).start();
    const sent = await ca.send("hi bob", { recipient: nameOf(bob) });
    const [got] = await received(cb, 1);
    expect(got.text).toBe("hi bob");
    expect(got.sender?.username).toBe(nameOf(alice));
    expect(got.seq).toBe(sent.seq);
    const thread = Number(got.threadId);

    await until(ca, (e) => e.type === "receipt" && e.receipt.kind === ReceiptKind.DELIVERED && e.receipt.seq >= sent.seq);
    cb.read(thread, Number(got.seq));
    await until(ca, (e) => e.type === "receipt" && e.receipt.kind === ReceiptKind.READ && e.receipt.seq >= sent.seq);
    expect(cb.typing(thread, true)).toBe(true);
    const typing = (await until(ca, (e) => e.type === "typing")).pop() as Extract<Event, { type: "typing" }>;
    expect(typing.typing.user?.username).toBe(nameOf(bob));

    await cb.send("hi alice", { threadId: thread });
    expect((await received(ca, 1)).map((m) => m.text)).toEqual(["hi alice"]);
    expect((await alice.presence([nameOf(bob)]))[0].online).toBe(true);
    const [t] = await alice.threads();
    expect(t.lastMessage?.text).toBe("hi alice");
    await ca.close();
    await cb.close();
    await eventually(async () => !(await alice.presence([nameOf(bob)]))[0].online, 15_000, "bob offline");
  });

  it("an offline device gets everything on reconnect, once and in order", async () => {
    const { alice, bob } = await pair();
    const ca = await nodeConnection(alice).start();
    const first = await nodeConnection(bob).start();
    const warm = await ca.send("before", { recipient: nameOf(bob) });
    expect((await received(first, 1)).map((m) => m.text)).toEqual(["before"]);
    const saved = first.cursors;
    await first.close();

    const n = 150;
    const results = await Promise.all(Array.from({ length: n }, (_, i) => ca.send(`m${i}`, { threadId: Number(warm.threadId) })));
    expect(results.map((r) => Number(r.seq))).toEqual(Array.from({ length: n }, (_, i) => Number(warm.seq) + 1 + i));

    const again = nodeConnection(bob, { cursors: saved });
    await again.start(false);
    const events = await until(again, (e) => e.type === "sync-done");
    const replayed = events.flatMap((e) => (e.type === "message" ? [e.message.text] : []));
    expect(replayed).toEqual(Array.from({ length: n }, (_, i) => `m${i}`));
    await again.close();
    // The server stores a device's acks when its stream ends; wait until it has.
    await eventually(async () => (await deliveredSeq(alice, Number(warm.threadId), nameOf(bob))) === Number(warm.seq) + n);

    const third = nodeConnection(bob);
    await third.start(false);
    const none = (await until(third, (e) => e.type === "sync-done")).filter((e) => e.type === "message");
    expect(none).toEqual([]);
    await third.close();
    await ca.close();
  });

  it("messages the app never took are replayed on the next connect", async () => {
    const { alice, bob } = await pair();
    const ca = await nodeConnection(alice).start();
    const cb = await nodeConnection(bob).start();
    const sends = await Promise.all([1, 2, 3, 4, 5].map((i) => ca.send(`n${i}`, { recipient: nameOf(bob) })));
    const taken = await received(cb, 2);
    expect(taken.map((m) => m.text)).toEqual(["n1", "n2"]);
    await eventually(() => cb.queued >= 3, 15_000, "three more queued");
    expect(cb.cursors[Number(sends[0].threadId)]).toBe(Number(sends[1].seq));
    await cb.close();
    await eventually(async () => (await deliveredSeq(alice, Number(sends[0].threadId), nameOf(bob))) === Number(sends[1].seq));

    const next = nodeConnection(bob);
    await next.start(false);
    const replay = (await until(next, (e) => e.type === "sync-done")).flatMap((e) => (e.type === "message" ? [e.message.text] : []));
    expect(replay).toEqual(["n3", "n4", "n5"]);
    await next.close();
    await ca.close();
  });

  it("a send retried after a cut stream lands once", async () => {
    const { alice: alice0, bob } = await pair();
    const proxy = await new TcpProxy(server.grpcPort).listen();
    const alice = nodeClient(proxy.address, { token: alice0.token });
    const ca = await nodeConnection(alice).start();
    const cb = await nodeConnection(bob).start();
    proxy.hold(); // from here the server's frames to alice wait in the proxy
    let settled = false;
    const pending = ca.send("exactly once", { recipient: nameOf(bob), clientMsgId: "k-once" }).finally(() => (settled = true));
    const [stored] = await received(cb, 1); // stored, and pushed to bob
    expect(stored.text).toBe("exactly once");
    expect(settled).toBe(false); // alice never heard back ...
    proxy.cut(); // ... and her stream is cut
    const result = await pending; // the outbox sends k-once again on the next stream
    expect(result.seq).toBe(stored.seq);
    expect(result.msgId).toBe(stored.msgId);
    expect(ca.stats.connects).toBeGreaterThanOrEqual(2);
    expect(ca.stats.resends).toBeGreaterThanOrEqual(1);
    const rows = (await bob.history(Number(stored.threadId))).messages;
    expect(rows.map((m) => [m.text, m.clientMsgId])).toEqual([["exactly once", "k-once"]]);
    await ca.send("after", { threadId: Number(stored.threadId) });
    expect((await received(cb, 1)).map((m) => m.text)).toEqual(["after"]);
    await ca.close();
    await cb.close();
    await proxy.close();
  });

  it("groups fan out and history pages back", async () => {
    const { alice, bob } = await pair();
    const carol = await newUser(server.address, "carol");
    const group = await alice.createGroup("Weekend", [nameOf(bob), nameOf(carol)]);
    const id = Number(group!.threadId);
    const ca = await nodeConnection(alice).start();
    const cb = await nodeConnection(bob).start();
    const cc = await nodeConnection(carol).start();
    const n = 120;
    for (let i = 0; i < n; i++) void ca.send(`g${i}`, { threadId: id });
    for (const c of [cb, cc]) expect((await received(c, n)).map((m) => m.text)).toEqual(Array.from({ length: n }, (_, i) => `g${i}`));
    const seqs: number[] = [];
    let page = await bob.history(id, { limit: 50 });
    for (;;) {
      seqs.unshift(...page.messages.map((m) => Number(m.seq)));
      if (!page.more) break;
      page = await bob.history(id, { beforeSeq: Number(page.messages[0].seq), limit: 50 });
    }
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));
    expect((await bob.thread(id)).members.length).toBe(3);
    for (const c of [ca, cb, cc]) await c.close();
  });

  it("a bad token is a typed error, on calls and on the stream", async () => {
    const stranger = nodeClient(server.address, { token: "not-a-token" });
    const call = await stranger.contacts().catch((e: unknown) => e);
    expect(call).toBeInstanceOf(NatterError);
    expect((call as NatterError).reason).toBe("BAD_TOKEN");
    expect((call as NatterError).unauthenticated).toBe(true);
    const conn = nodeConnection(stranger);
    const stream = await conn.start().catch((e: unknown) => e);
    expect((stream as NatterError).reason).toBe("BAD_TOKEN");
    expect(conn.state).toBe("closed");
    const send = await conn.send("x", { recipient: "nobody" }).catch((e: unknown) => e);
    expect((send as NatterError).reason).toBe("BAD_TOKEN");

    const { alice, bob } = await pair();
    const dup = await alice.register(nameOf(bob), PASSWORD).catch((e: unknown) => e);
    expect((dup as NatterError).code).toBe(6); // ALREADY_EXISTS
    const ca = await nodeConnection(alice).start();
    const missing = await ca.send("hello?", { recipient: "no-such-user" }).catch((e: unknown) => e);
    expect((missing as NatterError).reason).toBe("USER_NOT_FOUND");
    await alice.logout();
    const end = (await until(ca, (e) => e.type === "disconnected")).pop() as Extract<Event, { type: "disconnected" }>;
    expect(end.final).toBe(true);
    expect(end.error?.reason).toBe("DEVICE_LOGGED_OUT");
    await ca.close();
  });
});

describe("a server restart", () => {
  it("mid-burst loses nothing and duplicates nothing", async () => {
    const own = await new NatterServer().start();
    try {
      const alice = await newUser(own.address, "alice");
      const bob = await newUser(own.address, "bob");
      const ca = await nodeConnection(alice, { maxBackoffMs: 500 }).start();
      const cb = await nodeConnection(bob, { maxBackoffMs: 500 }).start();
      const warm = await ca.send("warm-up", { recipient: nameOf(bob) });
      expect((await received(cb, 1)).map((m) => m.text)).toEqual(["warm-up"]);
      const n = 800;
      let done = 0;
      // The kill starts from the acknowledgement that makes a quarter, not from a poll: on a
      // busy machine a poll can come too late, after the whole burst was acknowledged.
      let quarter: () => void = () => {};
      const reached = new Promise<void>((resolve) => (quarter = resolve));
      const sends = Array.from({ length: n }, (_, i) =>
        ca.send(`b${i}`, { threadId: Number(warm.threadId) }).finally(() => {
          done += 1;
          if (done === n / 4) quarter();
        }),
      );
      await reached;
      await own.kill();
      const before = done;
      await own.start();
      const results = await Promise.all(sends);
      expect(before).toBeLessThan(n);
      expect(results.map((r) => Number(r.seq))).toEqual(Array.from({ length: n }, (_, i) => Number(warm.seq) + 1 + i));
      const got = await received(cb, n, 60_000);
      expect(got.map((m) => m.text)).toEqual(Array.from({ length: n }, (_, i) => `b${i}`));
      const rows = (await bob.history(Number(warm.threadId), { limit: 1000, forward: true })).messages;
      expect(rows.map((m) => m.text)).toEqual(["warm-up", ...Array.from({ length: n }, (_, i) => `b${i}`)]);
      expect(ca.stats.connects).toBeGreaterThanOrEqual(2);
      await ca.close();
      await cb.close();
    } finally {
      await own.stop();
    }
  });
});
