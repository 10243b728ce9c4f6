// Frames with fields and enum values this SDK does not know, Redirect and heartbeats, through a
// scripted stream transport (the seam every transport plugs into).
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { describe, expect, it } from "vitest";
import { Connection, Merger, NatterClient, type DeviceStream, type StreamHandlers, type StreamTransport } from "../src/index.js";
import { nodeClient } from "../src/node.js";
import {
  MessageKind,
  MessageSchema,
  ReceiptKind,
  ServerFrameSchema,
  type ClientFrame,
  type ServerFrame,
} from "../src/v1.js";
import { eventually, until } from "./support.js";

/** `bytes` with one more length-delimited field: a field this SDK's contracts lack. */
function withUnknownField(bytes: Uint8Array, field: number, value: string): Uint8Array {
  const extra = new BinaryWriter().tag(field, 2).string(value).finish();
  const out = new Uint8Array(bytes.length + extra.length);
  out.set(bytes);
  out.set(extra, bytes.length);
  return out;
}

/** A stream transport that answers each open with a script, and records what the device sent. */
class Scripted implements StreamTransport {
  opened: (string | undefined)[] = [];
  sent: { at: number; frame: ClientFrame }[] = [];
  constructor(private script: (n: number, push: (f: ServerFrame) => void, h: StreamHandlers) => void) {}

  open(address: string | undefined, _token: string, h: StreamHandlers): DeviceStream {
    const n = this.opened.push(address);
    let ended = false;
    setTimeout(() => h.open(), 0);
    const push = (f: ServerFrame) => {
      // Every frame crosses the wire as bytes, as on a real transport.
      if (!ended) h.frame(fromBinary(ServerFrameSchema, toBinary(ServerFrameSchema, f)));
    };
    const stream: DeviceStream = {
      send: (frame) => {
        if (ended) return false;
        const frames = frame.payload.case === "batch" ? frame.payload.value.frames : [frame];
        for (const f of frames) this.sent.push({ at: Date.now(), frame: f });
        if (frame.payload.case === "hello") setTimeout(() => this.script(n, push, h), 0);
        if (frame.payload.case === "heartbeat") push(create(ServerFrameSchema, { payload: { case: "heartbeatAck", value: {} } }));
        return true;
      },
      end: () => stream.close(),
      close: () => {
        if (ended) return;
        ended = true;
        h.closed({ code: 0, reason: "", message: "closed" });
      },
    };
    return stream;
  }

  of(kind: ClientFrame["payload"]["case"]) {
    return this.sent.filter((s) => s.frame.payload.case === kind);
  }
}

const welcome = (heartbeatIntervalSeconds = 5) =>
  create(ServerFrameSchema, {
    payload: { case: "welcome", value: { user: { userId: 1n, username: "future" }, deviceId: 7n, heartbeatIntervalSeconds, nodeId: "scripted" } },
  });
const syncDone = (replayed: bigint) => create(ServerFrameSchema, { payload: { case: "syncDone", value: { replayed } } });
const offline = () => new NatterClient(nodeClient("127.0.0.1:1").transport, { token: "t" });

describe("contract additions", () => {
  it("frames with fields and enum values this SDK does not know are skipped or surfaced, never a crash", async () => {
    const peer = { userId: 2n, username: "peer" };
    // A message of a kind added later (42), carrying a field added later (50).
    const futureBytes = withUnknownField(
      toBinary(MessageSchema, create(MessageSchema, { threadId: 9n, seq: 1n, msgId: "m1", sender: peer, kind: 42 as MessageKind })),
      50,
      "a reaction, say",
    );
    const future = fromBinary(MessageSchema, futureBytes);
    // A frame whose payload is a oneof case added later (field 99).
    const unknownFrame = fromBinary(ServerFrameSchema, withUnknownField(new Uint8Array(), 99, "a new kind of frame"));
    const text = create(MessageSchema, { threadId: 9n, seq: 2n, msgId: "m2", sender: peer, kind: MessageKind.TEXT, text: "still here" });
    const scripted = new Scripted((_n, push) => {
      push(welcome(1));
      push(unknownFrame);
      push(create(ServerFrameSchema, { payload: { case: "message", value: future } }));
      push(create(ServerFrameSchema, { payload: { case: "receipt", value: { threadId: 9n, user: peer, kind: 9 as ReceiptKind, seq: 1n } } }));
      push(create(ServerFrameSchema, { payload: { case: "batch", value: { frames: [unknownFrame, create(ServerFrameSchema, { payload: { case: "message", value: text } })] } } }));
      push(syncDone(2n));
    });
    const conn = await new Connection({ client: offline(), stream: scripted }).start();
    const events = await until(conn, (e) => e.type === "sync-done");
    const messages = events.flatMap((e) => (e.type === "message" ? [e.message] : []));
    expect(messages.map((m) => Number(m.seq))).toEqual([1, 2]);
    expect(messages[0].kind).toBe(42); // no name for it here: the app shows it as unsupported
    expect(toBinary(MessageSchema, messages[0]).length).toBe(futureBytes.length); // the unknown field is kept
    expect(messages[1].text).toBe("still here");
    const receipt = events.find((e) => e.type === "receipt");
    expect(receipt?.type === "receipt" && receipt.receipt.kind).toBe(9);
    expect(conn.stats.unknownFrames).toBe(2);
    expect(conn.state).toBe("online");
    // Both were taken, the unknown kind too: the ack covers seq 2.
    await eventually(() => scripted.of("ack").some((s) => s.frame.payload.case === "ack" && s.frame.payload.value.cursors.some((c) => c.threadId === 9n && c.seq === 2n)));
    // Heartbeats at the Welcome's interval (1 s), answered.
    await eventually(() => scripted.of("heartbeat").length >= 3, 10_000, "three heartbeats");
    const beats = scripted.of("heartbeat").map((s) => s.at);
    for (let i = 1; i < beats.length; i++) expect(beats[i] - beats[i - 1]).toBeGreaterThanOrEqual(900);
    expect(conn.stats.heartbeatAcks).toBeGreaterThanOrEqual(2);
    await conn.close();
  });

  it("a Redirect moves the stream to the socket server it names", async () => {
    const scripted = new Scripted((n, push) => {
      push(welcome());
      if (n === 1) push(create(ServerFrameSchema, { payload: { case: "redirect", value: { address: "socket-2.natter.test:7070" } } }));
      else push(syncDone(0n));
    });
    const conn = await new Connection({ client: offline(), stream: scripted }).start();
    expect(scripted.opened).toEqual([undefined, "socket-2.natter.test:7070"]);
    const connected = (await until(conn, (e) => e.type === "sync-done")).filter((e) => e.type === "connected");
    expect(connected.length).toBe(2);
    await conn.close();
  });
});

describe("Merger", () => {
  const m = (seq: number) => ({ threadId: 7, seq });
  it("releases in order, drops duplicates, reports and fills gaps", () => {
    const merger = new Merger<{ threadId: number; seq: number }>({ 7: 2 });
    expect(merger.offer(m(2)).released).toEqual([]);
    expect(merger.offer(m(5)).gap).toEqual({ threadId: 7, afterSeq: 2, beforeSeq: 5 });
    expect(merger.offer(m(3)).released.map((x) => x.seq)).toEqual([3]);
    expect(merger.offer(m(4)).released.map((x) => x.seq)).toEqual([4, 5]);
    expect(merger.pendingGap(7)).toBeNull();
    merger.offer(m(9));
    expect(merger.skipTo(7, 8).map((x) => x.seq)).toEqual([9]);
    expect(merger.cursors[7]).toBe(9);
  });
});
