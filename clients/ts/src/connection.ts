// The device's live connection, independent of its transport: reconnect with jittered backoff,
// resume from cursors, an ordered outbox, acks only for what the app took, gaps filled from history.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { NatterClient } from "./client.js";
import { Code, NatterError } from "./errors.js";
import {
  ClientFrameSchema,
  SendSchema,
  type Send,
  type SendResult,
  type ServerFrame,
  type StreamError,
} from "./gen/natter/v1/socket_service_pb.js";
import { Fold } from "./fold.js";
import {
  CursorSchema,
  MessageKind,
  MessageSchema,
  MessageState,
  type Message,
  type Presence,
  type Receipt,
  type Typing,
  type User,
  type UserChange,
} from "./gen/natter/v1/types_pb.js";
import { Merger } from "./merge.js";
import type { DeviceStream, StreamEnd, StreamTransport } from "./stream.js";
import { TypingPacer } from "./typing.js";

/**
 * What a connection hands the app. Switch on `type` with a default branch: later SDKs add
 * types. A message's `kind` may be a number this SDK has no name for (a kind added to the
 * contracts later): show it as unsupported; it still counts as taken and moves the cursor.
 */
export type Event =
  /** A message, once per `(thread, seq)`, in order per thread; `source` says whether it came on the stream or from history. */
  | { type: "message"; message: Message; own: boolean; source: "stream" | "history" }
  | { type: "receipt"; receipt: Receipt }
  | { type: "presence"; presence: Presence }
  | { type: "typing"; typing: Typing }
  /** The user muted or unmuted a thread on one of their devices; `until` in ms since the epoch, 0 for forever (or unmuted). */
  | { type: "thread-mute"; threadId: number; muted: boolean; until: number }
  /** A contact or chat partner (or this user, on another device) changed their display name, about or picture: `user` as this user may see it now, also kept in `connection.profiles`. */
  | { type: "profile"; user: User }
  /** A change to the user's own view (delete for me): `connection.fold` has taken it already. */
  | { type: "user-change"; change: UserChange }
  /** The user read a thread up to seq on another device. */
  | { type: "read-cursor"; threadId: number; seq: number }
  /** The replay after connecting is done: what follows is live. */
  | { type: "sync-done"; replayed: number }
  | { type: "connected"; nodeId: string; address: string; user: User | undefined; deviceId: number; heartbeatSeconds: number }
  /** The stream ended; unless `final`, the connection tries again by itself. */
  | { type: "disconnected"; reason: string; final: boolean; error?: NatterError }
  /** The server refused a send for good (its promise rejects with the same error). */
  | { type: "send-failed"; clientMsgId: string; error: NatterError }
  /** The server refused a frame that was not a send. */
  | { type: "rejected"; error: NatterError };

export type ConnectionState = "connecting" | "syncing" | "online" | "offline" | "closed";

/** What a send may carry besides its text: attachments, a quote, or a change to a message. */
export interface SendExtras {
  /** Uploaded attachment ids (POST /v1/uploads): the text is then a caption. */
  attachmentIds?: string[];
  /** Quote this message of the same thread. */
  replyToSeq?: number;
  /** Set the sender's reaction to a message; an empty emoji removes it. */
  react?: { seq: number; emoji: string };
  /** Replace the text of one's own message with the send's text. */
  edit?: { seq: number };
  /** Delete a message for everyone. */
  delete?: { seq: number };
  /** Copy a message of a thread the sender can see into the send's target. */
  forward?: { threadId: number; seq: number };
}

/** Where a send goes, with its idempotency key (a fresh one when unset). */
export interface SendTarget extends SendExtras {
  threadId?: number;
  recipient?: string;
  clientMsgId?: string;
}

/** A message waiting in the outbox: what an app saves to send it after a restart. */
export interface PendingSend extends SendExtras {
  clientMsgId: string;
  text: string;
  threadId?: number;
  recipient?: string;
}

export interface ConnectionOptions {
  /** Unary calls: history to fill gaps, Locate. */
  client: NatterClient;
  /** How device streams are opened: `webSocketStream(...)` or `grpcStream(...)`. */
  stream: StreamTransport;
  /** Per thread, the last seq the app has stored: the replay starts after them. */
  cursors?: Record<number, number>;
  /** Replay nothing for threads without a cursor: the app pages their history on demand. */
  skipReplay?: boolean;
  /** Ack a message when the app takes it (default); off: the app calls `ack()` once it has stored it. */
  autoAck?: boolean;
  /** Ask Locate where the user's streams belong before each connect (cluster mode, gRPC). */
  locate?: boolean;
  /** Heartbeat every this many seconds; default the server's interval from Welcome. */
  heartbeatSeconds?: number;
  /** Longest pause between reconnects (they are jittered and grow from 100 ms); default 5000. */
  maxBackoffMs?: number;
  /** Sends saved by an earlier run: they go out first, with their own ids, in this order. */
  outbox?: PendingSend[];
  /** The app is in front of the person (a visible tab): no push notifications while live. Change it with `setForeground`. */
  foreground?: boolean;
  /**
   * The last entry of the user's own change log (delete for me) the app has: later ones come
   * as `user-change` events. Unset: from 0, unless `skipReplay` (then none are asked for).
   */
  userLogSeq?: number;
}

interface Pending {
  send: Send;
  resolve: (r: SendResult) => void;
  reject: (e: NatterError) => void;
  promise: Promise<SendResult>;
  sentOn: number;
  retries: number;
}

const BATCH_FRAMES = 256;

export function newClientMsgId(): string {
  const c = globalThis.crypto;
  if (c && "randomUUID" in c) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}

/**
 * One device's connection. It keeps natter's delivery contract whatever the transport:
 *
 * - the outbox goes out in call order with stable client_msg_ids, again on every welcome, and
 *   after a transient refusal it pauses (jittered) and resends from the oldest unanswered send;
 * - messages from replay, pushes and history pass a Merger: once per `(thread, seq)`, in order,
 *   gaps filled with ThreadService.ListMessages;
 * - acks are cumulative per-thread cursors, coalesced, and cover only what the app took;
 * - Hello carries the cursors of what arrived; heartbeats follow the Welcome's interval; a
 *   Redirect (or Locate) moves the stream; reconnects back off with jitter.
 */
export class Connection {
  readonly client: NatterClient;
  readonly merger: Merger<Message>;
  /** Every entry surfaced, folded: edits, deletes and reactions on their messages, hidden ones marked. */
  readonly fold = new Fold();
  /** The latest profile of each user heard of by a `profile` event, by user id (lists fetched after a reconnect carry them too). */
  readonly profiles = new Map<number, User>();
  state: ConnectionState = "offline";
  user: User | undefined;
  deviceId = 0;
  readonly stats = { connects: 0, resends: 0, gapsFilled: 0, heartbeatAcks: 0, heldBack: 0, unknownFrames: 0, typing: 0 };

  private readonly opts: Required<Omit<ConnectionOptions, "client" | "stream" | "cursors" | "outbox" | "heartbeatSeconds" | "foreground" | "userLogSeq">> & {
    heartbeatSeconds: number;
  };
  private readonly streams: StreamTransport;
  private readonly taken: Record<number, number>;
  private ackDirty: Record<number, number> = {};
  private readonly queue: Event[] = [];
  private readonly waiting: (() => void)[] = [];
  private readonly listeners = new Set<(ev: Event) => void>();
  private readonly outbox = new Map<string, Pending>();
  private readonly pendingReads = new Map<number, number>();
  private stream: DeviceStream | null = null;
  private epoch = 0;
  private live = false;
  private acksOk = false;
  private holding = false;
  private attempt = 0;
  private address: string | undefined;
  private lastFrame = 0;
  private closing = false;
  private finalError: NatterError | undefined;
  private chain: Promise<void> = Promise.resolve();
  private timers = { retry: undefined as Timer, resume: undefined as Timer, ack: undefined as Timer, heart: undefined as Timer };
  private stateWaiters: (() => void)[] = [];
  private readonly pacer = new TypingPacer();
  private foreground: boolean;
  private readonly typingStops = new Map<number, ReturnType<typeof setTimeout>>();
  private ended: Promise<void> | null = null;
  private endedResolve: (() => void) | null = null;
  private readonly logWanted: boolean;
  private logArrived: number;
  private logTaken: number;

  constructor(options: ConnectionOptions) {
    this.client = options.client;
    this.streams = options.stream;
    this.merger = new Merger<Message>({ ...(options.cursors ?? {}) });
    this.taken = { ...(options.cursors ?? {}) };
    this.opts = {
      skipReplay: options.skipReplay ?? false,
      autoAck: options.autoAck ?? true,
      locate: options.locate ?? false,
      heartbeatSeconds: options.heartbeatSeconds ?? 0,
      maxBackoffMs: options.maxBackoffMs ?? 5000,
    };
    this.foreground = options.foreground ?? false;
    this.user = options.client.user;
    this.deviceId = options.client.deviceId;
    this.logWanted = options.userLogSeq !== undefined || !this.opts.skipReplay;
    this.logArrived = this.logTaken = options.userLogSeq ?? 0;
    for (const p of options.outbox ?? []) void this.send(p.text, p).catch(() => undefined);
  }

  // -- public ----------------------------------------------------------------------------------

  /** Opens the stream and keeps it open until close(); resolves once in sync (unless `waitSynced` is false). */
  async start(waitSynced = true, timeoutMs = 30_000): Promise<this> {
    if (this.state === "offline" && !this.stream && !this.timers.retry && !this.closing && !this.finalError) {
      void this.connect();
    }
    if (waitSynced) {
      await this.until(() => this.state === "online" || this.state === "closed", timeoutMs);
      if (this.finalError) throw this.finalError;
    }
    return this;
  }

  /**
   * Sends a message: resolves with the SendResult once it is stored, retrying across reconnects
   * with the same client_msg_id; rejects with the refusal when the server refuses it for good.
   * Sends go out, and are stored, in the order of the calls.
   */
  send(text: string, to: SendTarget): Promise<SendResult> {
    if (this.finalError) return Promise.reject(this.finalError);
    const clientMsgId = to.clientMsgId || newClientMsgId();
    const existing = this.outbox.get(clientMsgId);
    if (existing) return existing.promise;
    const send = create(SendSchema, {
      clientMsgId,
      text,
      target: to.threadId ? { case: "threadId", value: BigInt(to.threadId) } : { case: "recipient", value: to.recipient ?? "" },
      attachmentIds: to.attachmentIds ?? [],
      replyToSeq: BigInt(to.replyToSeq ?? 0),
      change: to.react
        ? { case: "react", value: { seq: BigInt(to.react.seq), emoji: to.react.emoji } }
        : to.edit
          ? { case: "edit", value: { seq: BigInt(to.edit.seq) } }
          : to.delete
            ? { case: "delete", value: { seq: BigInt(to.delete.seq) } }
            : to.forward
              ? { case: "forward", value: { threadId: BigInt(to.forward.threadId), seq: BigInt(to.forward.seq) } }
              : { case: undefined },
    });
    let resolve!: (r: SendResult) => void;
    let reject!: (e: NatterError) => void;
    const promise = new Promise<SendResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    if (to.threadId) {
      this.pacer.sent(to.threadId);
      clearTimeout(this.typingStops.get(to.threadId));
      this.typingStops.delete(to.threadId);
    }
    const p: Pending = { send, resolve, reject, promise, sentOn: -1, retries: 0 };
    this.outbox.set(clientMsgId, p);
    this.transmit([p]);
    return promise;
  }

  /** Sets this user's reaction to a message of the thread; an empty emoji removes it. */
  react(threadId: number, seq: number, emoji: string, clientMsgId?: string): Promise<SendResult> {
    return this.send("", { threadId, clientMsgId, react: { seq, emoji } });
  }

  /** Changes the text of one of this user's messages, within the server's edit window. */
  edit(threadId: number, seq: number, text: string, clientMsgId?: string): Promise<SendResult> {
    return this.send(text, { threadId, clientMsgId, edit: { seq } });
  }

  /** Deletes a message for everyone (one's own within the window, any as a group admin). */
  delete(threadId: number, seq: number, clientMsgId?: string): Promise<SendResult> {
    return this.send("", { threadId, clientMsgId, delete: { seq } });
  }

  /** Copies a message into another thread (attachments by reference, marked forwarded). */
  forward(from: { threadId: number; seq: number }, to: { threadId?: number; recipient?: string; clientMsgId?: string }): Promise<SendResult> {
    return this.send("", { ...to, forward: from });
  }

  /** The outbox, oldest first: what to save so a restart sends it (ConnectionOptions.outbox). */
  pending(): PendingSend[] {
    return [...this.outbox.values()].map(({ send }) => pendingOf(send));
  }

  /** How far the app has taken the user's own change log: save it, pass it back as `userLogSeq`. */
  get userLogSeq(): number {
    return this.logTaken;
  }

  /** Marks a thread read up to seq (a read receipt for the others); sent after the next sync when offline. */
  read(threadId: number, seq: number): void {
    if (!(this.live && this.acksOk && this.write({ case: "read", value: { threadId: BigInt(threadId), seq: BigInt(seq) } }))) {
      if (seq > (this.pendingReads.get(threadId) ?? 0)) this.pendingReads.set(threadId, seq);
    }
  }

  /**
   * Says the user is typing (call it on every keystroke) or stopped (the box was cleared, or
   * they paused). Paced so no server limit trips: a start goes out at most every 3 s per
   * thread, a stop only after a start, both later when the budget (1 a second, 3 at once) is
   * spent, and a message sent to the thread ends the indicator without a stop. True when a
   * frame went out now; dropped while offline.
   */
  typing(threadId: number, active = true): boolean {
    if (!this.live) return false;
    clearTimeout(this.typingStops.get(threadId));
    this.typingStops.delete(threadId);
    const wait = active ? this.pacer.start(threadId) : this.pacer.stop(threadId);
    if (wait > 0) {
      // Over budget: said once a token is back, unless the thread's typing changes meanwhile.
      this.typingStops.set(
        threadId,
        setTimeout(() => {
          this.typingStops.delete(threadId);
          this.typing(threadId, active);
        }, wait),
      );
    }
    return wait === 0 && this.writeTyping(threadId, active);
  }

  private writeTyping(threadId: number, active: boolean): boolean {
    const ok = this.write({ case: "typing", value: { threadId: BigInt(threadId), active } });
    if (ok) this.stats.typing += 1;
    return ok;
  }

  /**
   * Says whether the app is in front of the person (say, on `visibilitychange`): a device in
   * the foreground with a live stream gets no push notifications. Kept for reconnects (Hello).
   */
  setForeground(foreground: boolean): void {
    if (foreground === this.foreground) return;
    this.foreground = foreground;
    if (this.live) this.write({ case: "clientState", value: { foreground } });
  }

  /** Everything up to seq of the thread is shown or stored: move this device's cursor (autoAck does this on take). */
  ack(threadId: number, seq: number): void {
    if (seq > (this.taken[threadId] ?? 0)) this.taken[threadId] = seq;
    if (seq > (this.ackDirty[threadId] ?? 0)) this.ackDirty[threadId] = seq;
    if (!this.timers.ack) this.timers.ack = setTimeout(() => this.flushAcks(), 50);
  }

  /** Per thread, how far the app has taken (or acked) messages: save these, pass them back as `cursors`. */
  get cursors(): Record<number, number> {
    return { ...this.taken };
  }

  /**
   * Delivers every event to `listener` as it happens (then it counts as taken), instead of
   * queueing it for events(). Returns the unsubscribe function.
   */
  subscribe(listener: (ev: Event) => void): () => void {
    this.listeners.add(listener);
    while (this.queue.length) this.deliver(this.queue.shift()!);
    return () => this.listeners.delete(listener);
  }

  /** Events in order; taking one from the iterator is what acks a message. Ends after close(). */
  async *events(): AsyncGenerator<Event> {
    for (;;) {
      const ev = this.queue.shift();
      if (ev) {
        this.took(ev);
        yield ev;
        continue;
      }
      if (this.state === "closed" && !this.queue.length) return;
      await new Promise<void>((r) => this.waiting.push(r));
    }
  }

  /** The next event, or undefined after timeoutMs (taking a message acks it). */
  async next(timeoutMs = 30_000): Promise<Event | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ev = this.queue.shift();
      if (ev) {
        this.took(ev);
        return ev;
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.state === "closed") return undefined;
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiting.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Events waiting to be taken. */
  get queued(): number {
    return this.queue.length;
  }

  /**
   * Feeds messages the app fetched (a page of history) through the merge: the new ones surface
   * as `message` events with source "history", in order, gaps filled.
   */
  merge(messages: Message[]): Promise<void> {
    return this.serial(async () => {
      for (const m of messages) await this.offer(m, "history");
    });
  }

  /** Fetches anything of a thread after what arrived, up to `lastSeq` (say, from the thread list). */
  catchUp(threadId: number, lastSeq: number): Promise<void> {
    return this.serial(async () => {
      const cursor = this.merger.cursors[threadId];
      if (cursor === undefined || lastSeq <= cursor) return;
      await this.fill({ threadId, afterSeq: cursor, beforeSeq: lastSeq + 1 }, "history");
    });
  }

  /** Drops the stream now and reconnects at once (say, when the network is back). */
  reconnect(): void {
    if (this.closing || this.finalError) return;
    this.attempt = 0;
    if (this.timers.retry) {
      clearTimeout(this.timers.retry);
      this.timers.retry = undefined;
      void this.connect();
    } else if (!this.stream) {
      void this.connect();
    }
  }

  /** Drops the current stream (it reconnects with backoff): for a network known to be gone. */
  interrupt(): void {
    this.stream?.close();
  }

  /** Ends the connection: acks are written first; sends still in the outbox reject. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.flushAcks();
    clearTimeout(this.timers.retry);
    clearTimeout(this.timers.resume);
    clearTimeout(this.timers.ack);
    this.stopHeart();
    const s = this.stream;
    if (s) {
      const done = this.ended;
      s.end(); // the server ends the stream once it has read the acks
      await Promise.race([done, new Promise((r) => setTimeout(r, 2000))]);
      this.stream?.close();
    }
    const closed = new NatterError(Code.UNAVAILABLE, "the connection was closed before the send was acknowledged", "CONNECTION_CLOSED");
    for (const p of this.outbox.values()) p.reject(closed);
    this.outbox.clear();
    this.setState("closed");
  }

  // -- the stream ------------------------------------------------------------------------------

  private async connect(): Promise<void> {
    this.timers.retry = undefined;
    if (this.closing || this.finalError || this.stream) return;
    this.setState("connecting");
    let address = this.address;
    const me = this.client.user ?? this.user;
    if (this.opts.locate && me && address === undefined) {
      try {
        address = await this.client.locate(me.username);
      } catch {
        /* the front door is busy: connect where we would anyway */
      }
    }
    if (this.closing || this.stream) return;
    this.epoch += 1;
    this.live = false;
    this.acksOk = false;
    this.ended = new Promise((r) => (this.endedResolve = r));
    let redirected = false;
    const stream: DeviceStream = this.streams.open(address, this.client.token, {
      open: () => {
        if (this.stream !== stream) return;
        const cursors = Object.entries(this.merger.cursors).map(([t, seq]) =>
          create(CursorSchema, { threadId: BigInt(t), seq: BigInt(seq) }),
        );
        this.lastFrame = Date.now();
        stream.send(
          create(ClientFrameSchema, { payload: { case: "hello", value: {
                cursors,
                skipReplay: this.opts.skipReplay,
                acceptBatches: true,
                foreground: this.foreground,
                ...(this.logWanted ? { userLogSeq: BigInt(this.logArrived) } : {}),
              },
            },
          }),
        );
      },
      frame: (f) => {
        if (this.stream !== stream) return;
        this.lastFrame = Date.now();
        const frames = f.payload.case === "batch" ? f.payload.value.frames : [f];
        for (const frame of frames) {
          if (frame.payload.case === "redirect") {
            this.address = frame.payload.value.address;
            redirected = true;
            stream.close();
            return;
          }
          void this.serial(() => this.onFrame(frame, address));
        }
      },
      closed: (end) => {
        if (this.stream !== stream) return;
        this.onClosed(end, redirected);
      },
    });
    this.stream = stream;
  }

  private onClosed(end: StreamEnd, redirected: boolean): void {
    this.stream = null;
    this.live = false;
    this.pacer.reset();
    for (const t of this.typingStops.values()) clearTimeout(t);
    this.typingStops.clear();
    this.acksOk = false;
    this.stopHeart();
    this.stopHolding();
    this.endedResolve?.();
    if (!redirected) this.address = undefined; // a redirect target that failed may be gone
    if (this.closing) return;
    if (end.code === Code.UNAUTHENTICATED || end.reason === "CONNECTED_ELSEWHERE") {
      // Logged out, a bad token, or this device's token opened a newer stream elsewhere.
      this.giveUp(new NatterError(end.code, end.message, end.reason));
      return;
    }
    this.setState("offline");
    this.push({ type: "disconnected", reason: redirected ? "redirected" : `${end.reason || "ENDED"}: ${end.message}`, final: false });
    const delay = redirected ? 0 : Math.random() * Math.min(this.opts.maxBackoffMs, 100 * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 10);
    this.timers.retry = setTimeout(() => void this.connect(), delay);
  }

  private giveUp(err: NatterError): void {
    this.finalError = err;
    for (const p of this.outbox.values()) p.reject(err);
    this.outbox.clear();
    this.setState("closed");
    this.push({ type: "disconnected", reason: err.message, final: true, error: err });
  }

  private startHeart(seconds: number): void {
    this.stopHeart();
    const ms = Math.max(1, seconds) * 1000;
    this.timers.heart = setInterval(() => {
      const s = this.stream;
      if (!s) return;
      if (Date.now() - this.lastFrame > 3 * ms + 5000) {
        s.close(); // a silent stream is a dead one
        return;
      }
      this.write({ case: "heartbeat", value: {} });
    }, ms);
  }

  private stopHeart(): void {
    clearInterval(this.timers.heart);
    this.timers.heart = undefined;
  }

  private write(payload: MessageInitShape<typeof ClientFrameSchema>["payload"]): boolean {
    return this.stream?.send(create(ClientFrameSchema, { payload })) ?? false;
  }

  /** Frames are handled one after another (a gap fill waits for history before the next frame). */
  private serial(fn: () => Promise<void>): Promise<void> {
    const run = this.chain.then(fn);
    this.chain = run.catch((e) => {
      // A history call for a gap failed: the server went away. Drop the stream; the replay
      // after reconnecting starts from what arrived.
      if (!this.closing) console.warn("natter: dropping the stream:", e instanceof Error ? e.message : e);
      this.stream?.close();
    });
    return run;
  }

  private async onFrame(frame: ServerFrame, address: string | undefined): Promise<void> {
    const p = frame.payload;
    switch (p.case) {
      case "welcome": {
        const w = p.value;
        this.user = w.user;
        this.deviceId = Number(w.deviceId);
        if (!this.client.user) {
          this.client.user = w.user;
          this.client.deviceId = this.deviceId;
        }
        this.stats.connects += 1;
        this.attempt = 0;
        this.live = true;
        this.setState("syncing");
        this.stopHolding(); // a new stream holds nothing back
        this.transmit([...this.outbox.values()]); // the outbox first, oldest first
        const seconds = this.opts.heartbeatSeconds || w.heartbeatIntervalSeconds || 5;
        this.startHeart(seconds);
        this.push({ type: "connected", nodeId: w.nodeId, address: address ?? "", user: w.user, deviceId: this.deviceId, heartbeatSeconds: seconds });
        return;
      }
      case "message":
        this.acksOk = true;
        await this.offer(p.value, "stream");
        return;
      case "sendResult": {
        const r = p.value;
        const pending = this.outbox.get(r.clientMsgId);
        if (!pending) return;
        this.outbox.delete(r.clientMsgId);
        if (this.user) await this.offer(this.ownMessage(r, pending.send), "stream");
        pending.resolve(r);
        return;
      }
      case "syncDone":
        this.acksOk = true;
        for (const [t, seq] of this.pendingReads) this.write({ case: "read", value: { threadId: BigInt(t), seq: BigInt(seq) } });
        this.pendingReads.clear();
        this.setState("online");
        this.push({ type: "sync-done", replayed: Number(p.value.replayed) });
        this.flushAcks(); // taken while no stream could take the ack
        return;
      case "receipt":
        this.push({ type: "receipt", receipt: p.value });
        return;
      case "presence":
        this.push({ type: "presence", presence: p.value });
        return;
      case "typing":
        this.push({ type: "typing", typing: p.value });
        return;
      case "readCursor":
        this.push({ type: "read-cursor", threadId: Number(p.value.cursor?.threadId ?? 0), seq: Number(p.value.cursor?.seq ?? 0) });
        return;
      case "threadMute": {
        const end = p.value.muteEndTime;
        const until = end ? Number(end.seconds) * 1000 + Math.floor(end.nanos / 1e6) : 0;
        this.push({ type: "thread-mute", threadId: Number(p.value.threadId), muted: p.value.muted, until });
        return;
      }
      case "heartbeatAck":
        this.stats.heartbeatAcks += 1;
        return;
      case "profileChanged": {
        const u = p.value.user;
        if (!u) return;
        this.profiles.set(Number(u.userId), u);
        this.push({ type: "profile", user: u });
        return;
      }
      case "userChange": {
        const c = p.value;
        if (Number(c.seq) <= this.logArrived) return;
        this.logArrived = Number(c.seq);
        this.fold.change(c);
        this.push({ type: "user-change", change: c });
        return;
      }
      case "error":
        this.onError(p.value);
        return;
      default:
        // A payload added to the contracts after this SDK was built: skipped, never a crash.
        this.stats.unknownFrames += 1;
    }
  }

  private onError(e: StreamError): void {
    const err = new NatterError(e.code, e.message, e.reason);
    const pending = e.clientMsgId ? this.outbox.get(e.clientMsgId) : undefined;
    if (pending && err.transient) {
      this.holdBack(pending);
    } else if (pending) {
      this.outbox.delete(e.clientMsgId);
      pending.reject(err);
      this.push({ type: "send-failed", clientMsgId: e.clientMsgId, error: err });
    } else {
      this.push({ type: "rejected", error: err });
    }
  }

  // -- receiving -------------------------------------------------------------------------------

  private async offer(m: Message, source: "stream" | "history"): Promise<void> {
    const { released, gap } = this.merger.offer(m);
    for (const r of released) this.surface(r, source);
    if (gap) await this.fill(gap, source);
  }

  private async fill(first: { threadId: number; afterSeq: number; beforeSeq: number }, source: "stream" | "history"): Promise<void> {
    let gap: typeof first | null = first;
    while (gap) {
      const threadId: number = gap.threadId;
      const before = this.merger.cursors[threadId] ?? 0;
      const page = await this.client.history(threadId, {
        afterSeq: gap.afterSeq,
        forward: true,
        limit: Math.max(1, Math.min(1000, gap.beforeSeq - gap.afterSeq - 1)),
      });
      this.stats.gapsFilled += 1;
      const firstSeq = page.messages.length ? Number(page.messages[0].seq) : gap.beforeSeq;
      if (firstSeq > gap.afterSeq + 1) {
        // History starts later: those seqs are not this member's to see (before they joined,
        // after they left) and will never come. Move past them.
        for (const r of this.merger.skipTo(threadId, Math.min(firstSeq, gap.beforeSeq) - 1)) this.surface(r, source);
      }
      for (const row of page.messages) for (const r of this.merger.offer(row).released) this.surface(r, source);
      gap = this.merger.pendingGap(threadId);
      if (gap && (this.merger.cursors[threadId] ?? 0) === before) {
        throw new NatterError(Code.INTERNAL, `history of thread ${threadId} did not fill seqs ${gap.afterSeq + 1}..${gap.beforeSeq - 1}`, "GAP_NOT_FILLED");
      }
    }
  }

  private isOwn(m: Message): boolean {
    return !!this.user && m.sender?.userId === this.user.userId && Number(m.senderDeviceId) === this.deviceId;
  }

  private surface(m: Message, source: "stream" | "history"): void {
    this.fold.apply(m);
    this.push({ type: "message", message: m, own: this.isOwn(m), source });
  }

  private push(ev: Event): void {
    if (this.listeners.size) {
      this.deliver(ev);
      return;
    }
    this.queue.push(ev);
    this.waiting.splice(0).forEach((w) => w());
  }

  private deliver(ev: Event): void {
    this.took(ev);
    for (const l of this.listeners) {
      try {
        l(ev);
      } catch (e) {
        // The app's bug must not take the connection down with it.
        console.error("natter: an event listener failed:", e);
      }
    }
  }

  private took(ev: Event): void {
    if (ev.type === "user-change" && Number(ev.change.seq) > this.logTaken) this.logTaken = Number(ev.change.seq);
    if (ev.type !== "message" || !this.opts.autoAck) return;
    const t = Number(ev.message.threadId);
    const seq = Number(ev.message.seq);
    if (ev.own) {
      if (seq > (this.taken[t] ?? 0)) this.taken[t] = seq; // this device's own send: nothing to ack
    } else {
      this.ack(t, seq);
    }
  }

  private flushAcks(): void {
    clearTimeout(this.timers.ack);
    this.timers.ack = undefined;
    // A stream takes acks once it has replayed or pushed something; sync done flushes the rest.
    const entries = Object.entries(this.ackDirty);
    if (!entries.length || !this.acksOk || !this.stream) return;
    const cursors = entries.map(([t, seq]) => create(CursorSchema, { threadId: BigInt(t), seq: BigInt(seq) }));
    if (this.write({ case: "ack", value: { cursors } })) this.ackDirty = {};
  }

  // -- sending ---------------------------------------------------------------------------------

  /** Writes the given sends not yet on this stream, in outbox order (nothing before Welcome or while held back). */
  private transmit(pendings: Pending[]): void {
    if (!this.live || this.holding || !this.stream) return;
    const todo = pendings.filter((p) => p.sentOn !== this.epoch);
    for (let i = 0; i < todo.length; i += BATCH_FRAMES) {
      const chunk = todo.slice(i, i + BATCH_FRAMES);
      const frames = chunk.map((p) => create(ClientFrameSchema, { payload: { case: "send", value: p.send } }));
      const ok =
        frames.length === 1 ? this.stream.send(frames[0]) : this.write({ case: "batch", value: { frames } });
      if (!ok) return;
      for (const p of chunk) {
        if (p.sentOn !== -1) this.stats.resends += 1;
        p.sentOn = this.epoch;
      }
    }
  }

  /**
   * A send refused for now: after a pause it goes again, and every send after it too (the
   * server refuses this device's later sends until this one comes again, so none overtakes it).
   */
  private holdBack(refused: Pending): void {
    if (refused.sentOn === -1) return; // already waiting to go again
    const all = [...this.outbox.values()];
    for (const p of all.slice(all.indexOf(refused))) p.sentOn = -1;
    refused.retries += 1;
    this.stats.heldBack += 1;
    this.holding = true;
    if (this.timers.resume) return;
    const epoch = this.epoch;
    const pause = (0.5 + Math.random() / 2) * Math.min(this.opts.maxBackoffMs, 200 * 2 ** Math.min(refused.retries, 5));
    this.timers.resume = setTimeout(() => {
      this.timers.resume = undefined;
      if (this.epoch !== epoch) return;
      this.holding = false;
      this.transmit([...this.outbox.values()]);
    }, pause);
  }

  private stopHolding(): void {
    this.holding = false;
    clearTimeout(this.timers.resume);
    this.timers.resume = undefined;
  }

  private ownMessage(r: SendResult, send: Send): Message {
    // The server returns the stored message when it added to the send (an attachment, a
    // quote, a forward's copy, an event); a plain text is rebuilt from the send.
    if (r.message) return create(MessageSchema, { ...r.message, sender: r.message.sender ?? this.user, senderDeviceId: BigInt(this.deviceId), state: MessageState.SENT });
    const text = send.text;
    return create(MessageSchema, {
      threadId: r.threadId,
      seq: r.seq,
      msgId: r.msgId,
      sender: this.user,
      senderDeviceId: BigInt(this.deviceId),
      clientMsgId: r.clientMsgId,
      kind: MessageKind.TEXT,
      text,
      createTime: r.createTime,
      state: MessageState.SENT,
    });
  }

  private setState(s: ConnectionState): void {
    this.state = s;
    this.stateWaiters.splice(0).forEach((w) => w());
    if (s === "closed") this.waiting.splice(0).forEach((w) => w());
  }

  private async until(cond: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new NatterError(Code.DEADLINE_EXCEEDED, `not in sync within ${timeoutMs} ms`, "CONNECT_TIMEOUT");
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.stateWaiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }
}

type Timer = ReturnType<typeof setTimeout> | undefined;

function pendingOf(send: Send): PendingSend {
  const c = send.change;
  return {
    clientMsgId: send.clientMsgId,
    text: send.text,
    ...(send.target.case === "threadId" ? { threadId: Number(send.target.value) } : { recipient: send.target.value ?? "" }),
    ...(send.attachmentIds.length ? { attachmentIds: [...send.attachmentIds] } : {}),
    ...(send.replyToSeq ? { replyToSeq: Number(send.replyToSeq) } : {}),
    ...(c.case === "react" ? { react: { seq: Number(c.value.seq), emoji: c.value.emoji } } : {}),
    ...(c.case === "edit" ? { edit: { seq: Number(c.value.seq) } } : {}),
    ...(c.case === "delete" ? { delete: { seq: Number(c.value.seq) } } : {}),
    ...(c.case === "forward" ? { forward: { threadId: Number(c.value.threadId), seq: Number(c.value.seq) } } : {}),
  };
}
