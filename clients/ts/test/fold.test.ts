// Rich messages through the TypeScript SDK against a real server: attachments, replies,
// reactions, edits, deletes, delete for me and search, folded the way natter/sdk/fold.py folds.
import { create } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Fold, isKnownKind, upload, type Connection, type Event, type NatterClient, type View } from "../src/index.js";
import { nodeConnection } from "../src/node.js";
import { MessageKind, MessageSchema, UserChangeKind, UserChangeSchema, UserSchema } from "../src/v1.js";
import { NatterServer, eventually, nameOf, newUser, until } from "./support.js";

const server = new NatterServer();
beforeAll(() => server.start());
afterAll(() => server.stop());

// A valid 1×1 PNG.
const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==", "base64");

/** What a person sees of a thread: comparable across devices. */
function shown(views: View[]) {
  return views.map((v) => ({
    seq: v.seq,
    kind: v.kind,
    text: v.text,
    edited: v.edited,
    deleted: v.deleted,
    files: v.attachments.map((a) => a.name),
    reply: v.message.replyTo ? Number(v.message.replyTo.seq) : 0,
    counts: v.counts,
  }));
}

/** Takes events until the connection's fold of the thread satisfies `ok`. */
async function foldedUntil(conn: Connection, threadId: number, ok: (views: View[]) => boolean, timeoutMs = 20_000): Promise<View[]> {
  if (ok(conn.fold.thread(threadId))) return conn.fold.thread(threadId);
  await until(conn, () => ok(conn.fold.thread(threadId)), timeoutMs);
  return conn.fold.thread(threadId);
}

async function trio(): Promise<{ alice: NatterClient; bob: NatterClient; carol: NatterClient }> {
  const alice = await newUser(server.address, "alice");
  const bob = await newUser(server.address, "bob");
  const carol = await newUser(server.address, "carol");
  return { alice, bob, carol };
}

describe("folding message events in the TypeScript SDK", () => {
  it("a photo, a reply, a reaction, an edit and a delete converge on every device, also one that was offline", async () => {
    const { alice, bob, carol } = await trio();
    const group = await alice.createGroup("Trip", [nameOf(bob), nameOf(carol)]);
    const thread = Number(group!.threadId);
    const ca = await nodeConnection(alice).start();
    const cb = await nodeConnection(bob).start();

    let progress = 0;
    const photo = await upload(new Blob([PNG]), { name: "dot.png", type: "image/png" }, {
      baseUrl: `http://127.0.0.1:${server.httpPort}`,
      token: alice.token,
      chunkBytes: 16,
      progress: (sent) => (progress = sent),
    });
    expect(progress).toBe(PNG.length);
    expect(photo.mimeType).toBe("image/png");
    expect(photo.width).toBe(1);
    const sentPhoto = await ca.send("the view", { threadId: thread, attachmentIds: [photo.attachmentId] });
    const text = await ca.send("see you at eight", { threadId: thread });
    const oops = await ca.send("wrong chat", { threadId: thread });

    const bobSaw = await foldedUntil(cb, thread, (v) => v.some((x) => x.seq === Number(oops.seq)));
    const got = bobSaw.find((v) => v.seq === Number(sentPhoto.seq))!;
    expect(got.kind).toBe(MessageKind.ATTACHMENT);
    expect(got.text).toBe("the view");
    expect(got.attachments[0].attachmentId).toBe(photo.attachmentId);
    const links = await bob.attachmentLinks(photo.attachmentId);
    const res = await fetch(`http://127.0.0.1:${server.httpPort}${links.url}`);
    expect(Buffer.from(await res.arrayBuffer()).equals(PNG)).toBe(true);

    const reply = await cb.send("lovely", { threadId: thread, replyToSeq: Number(sentPhoto.seq) });
    expect(Number(reply.message?.replyTo?.seq)).toBe(Number(sentPhoto.seq));
    await cb.react(thread, Number(text.seq), "👍");
    await cb.edit(thread, Number(reply.seq), "lovely view");
    await ca.delete(thread, Number(oops.seq));

    const want = (v: View[]) => {
      const r = v.find((x) => x.seq === Number(reply.seq));
      const t = v.find((x) => x.seq === Number(text.seq));
      const o = v.find((x) => x.seq === Number(oops.seq));
      return r?.text === "lovely view" && r.edited && t?.counts[0]?.[0] === "👍" && !!o?.deleted;
    };
    const aliceView = await foldedUntil(ca, thread, want);
    const bobView = await foldedUntil(cb, thread, want);
    expect(shown(aliceView)).toEqual(shown(bobView));
    const r = aliceView.find((v) => v.seq === Number(reply.seq))!;
    expect(r.message.replyTo?.snippet).toBe("the view"); // the caption; a bare file would quote its name
    expect(aliceView.find((v) => v.seq === Number(text.seq))!.counts).toEqual([["👍", 1]]);
    // Events fold away: none of them is a message of its own in the view.
    expect(aliceView.every((v) => isKnownKind(v.kind) && v.kind !== MessageKind.REACTION && v.kind !== MessageKind.EDIT)).toBe(true);

    // Carol's device was offline through all of it: it connects and sees the same thread.
    const cc = await nodeConnection(carol).start();
    const carolView = await foldedUntil(cc, thread, want);
    expect(shown(carolView)).toEqual(shown(aliceView));

    // A history page (folded by the server) after the events changes nothing.
    const page = await carol.history(thread, { limit: 50 });
    await cc.merge(page.messages);
    const fresh = new Fold();
    for (const m of page.messages) fresh.apply(m);
    expect(shown(fresh.thread(thread))).toEqual(shown(carolView));

    const hits = await bob.search("eight");
    expect(hits.messages.map((m) => [Number(m.threadId), Number(m.seq)])).toEqual([[thread, Number(text.seq)]]);
    await Promise.all([ca.close(), cb.close(), cc.close()]);
  });

  it("delete for me hides a message on every device of that user only, from the user change log", async () => {
    const { alice, bob } = await trio();
    const ca = await nodeConnection(alice).start();
    const sent = await ca.send("private", { recipient: nameOf(bob) });
    const thread = Number(sent.threadId);
    const phone = await nodeConnection(bob, { userLogSeq: 0 }).start();
    await foldedUntil(phone, thread, (v) => v.some((x) => x.seq === Number(sent.seq)));

    await bob.hideMessages(thread, [Number(sent.seq)]);
    const evs = await until(phone, (e) => e.type === "user-change");
    const change = (evs.pop() as Extract<Event, { type: "user-change" }>).change;
    expect(change.kind).toBe(UserChangeKind.HIDE_MESSAGE);
    expect(phone.fold.thread(thread).map((v) => v.seq)).not.toContain(Number(sent.seq));
    expect(phone.userLogSeq).toBe(Number(change.seq));

    // A new device of bob's gets the hide in the replay; alice's still shows the message.
    const laptop = await nodeConnection(bob, { userLogSeq: 0 }).start();
    await eventually(() => laptop.fold.view(thread, Number(sent.seq))?.hidden === true, 15_000, "hidden on the new device");
    expect(laptop.userLogSeq).toBe(0); // arrived, but not yet taken from the queue
    await until(laptop, (e) => e.type === "user-change");
    expect(laptop.userLogSeq).toBe(Number(change.seq));
    await foldedUntil(ca, thread, (v) => v.some((x) => x.seq === Number(sent.seq) && !x.hidden));
    // A device that asks from the latest entry gets none again.
    const again = await nodeConnection(bob, { userLogSeq: Number(change.seq) }).start();
    expect((await again.next(500))?.type === "user-change").toBe(false);
    await Promise.all([ca.close(), phone.close(), laptop.close(), again.close()]);
  });

  it("a kind this SDK does not know is ordered, taken and shown as unsupported, never a crash", async () => {
    const { alice, bob } = await trio();
    const ca = await nodeConnection(alice).start();
    const sent = await ca.send("hello", { recipient: nameOf(bob) });
    const thread = Number(sent.threadId);
    const cb = await nodeConnection(bob).start();
    await foldedUntil(cb, thread, (v) => v.length === 1);
    const later = create(MessageSchema, {
      threadId: BigInt(thread),
      seq: sent.seq + 1n,
      kind: 42 as MessageKind,
      sender: alice.user,
      targetSeq: sent.seq,
    });
    await cb.merge([later]);
    const ev = (await until(cb, (e) => e.type === "message" && e.message.seq === later.seq)).pop() as Extract<Event, { type: "message" }>;
    expect(Number(ev.message.kind)).toBe(42);
    expect(isKnownKind(ev.message.kind)).toBe(false);
    expect(cb.cursors[thread]).toBe(Number(later.seq));
    const views = cb.fold.thread(thread);
    expect(views.map((v) => [v.seq, Number(v.kind)])).toEqual([
      [Number(sent.seq), MessageKind.TEXT],
      [Number(later.seq), 42],
    ]);
    expect(views[0].text).toBe("hello"); // an unknown kind never changes another message
    await Promise.all([ca.close(), cb.close()]);
  });

  it("folds the same whatever the order: the newest edit and each member's newest reaction win", () => {
    const u = (id: number) => create(UserSchema, { userId: BigInt(id), username: `u${id}` });
    const base = create(MessageSchema, { threadId: 1n, seq: 1n, kind: MessageKind.TEXT, text: "v1", sender: u(1) });
    const ev = (seq: number, kind: MessageKind, extra: object) =>
      create(MessageSchema, { threadId: 1n, seq: BigInt(seq), kind, targetSeq: 1n, sender: u(seq % 2 ? 2 : 3), ...extra });
    const entries = [
      base,
      ev(2, MessageKind.EDIT, { text: "v2", sender: u(1) }),
      ev(3, MessageKind.REACTION, { emoji: "👍" }),
      ev(4, MessageKind.REACTION, { emoji: "❤️" }),
      ev(5, MessageKind.REACTION, { emoji: "" }),
      ev(6, MessageKind.EDIT, { text: "v3", sender: u(1) }),
      ev(7, MessageKind.REACTION, { emoji: "😂" }),
    ];
    const seen = new Set<string>();
    for (const order of [entries, [...entries].reverse(), [entries[3], entries[0], entries[6], entries[1], entries[5], entries[2], entries[4], entries[0]]]) {
      const f = new Fold();
      for (const m of order) f.apply(m);
      const v = f.view(1, 1)!;
      expect(v.text).toBe("v3");
      expect(v.edited).toBe(true);
      expect([...v.counts].sort()).toEqual([
        ["❤️", 1],
        ["😂", 1],
      ]);
      seen.add(JSON.stringify([...v.reactions.entries()].map(([k, r]) => [k, r.emoji]).sort()));
    }
    expect(seen.size).toBe(1);
    // u2's newest (seq 7) is 😂; u3's newest (seq 4) is ❤️; the removal at seq 5 was u2's, before 7.
    const f = new Fold();
    for (const m of entries) f.apply(m);
    expect(new Map([...f.view(1, 1)!.reactions].map(([k, r]) => [k, r.emoji]))).toEqual(new Map([[2, "😂"], [3, "❤️"]]));
    f.apply(ev(8, MessageKind.DELETE, { sender: u(1) }));
    expect(f.view(1, 1)).toMatchObject({ deleted: true, text: "", counts: [] });
    expect(f.change(create(UserChangeSchema, { seq: 1n, kind: UserChangeKind.HIDE_MESSAGE, message: { threadId: 1n, seq: 1n } }))).toEqual([1, 1]);
    expect(f.thread(1)).toEqual([]);
  });
});
