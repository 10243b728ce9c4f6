// The app's controller: one device's state, its WebSocket, the outbox, sync and every action.
import { create } from "@bufbuild/protobuf";
import { type Api, isUnauthenticated, isUnimplemented, makeApi, problem } from "./api";
import { CursorSchema, ReceiptKind } from "./gen/natter/v1/types_pb";
import {
  AckSchema,
  HeartbeatSchema,
  HelloSchema,
  ReadSchema,
  SendSchema,
  TypingRequestSchema,
  type ServerFrame,
} from "./gen/natter/v1/socket_service_pb";
import {
  newDevice,
  type ContactInfo,
  type DeviceState,
  type MemberInfo,
  type Msg,
  type Pending,
  type ThreadInfo,
} from "./model";
import { Socket, socketUrl, UNAUTHENTICATED_CLOSE } from "./socket";
import { claimDevice, forgetDevice, hold, release, saveDevice } from "./store";
import {
  applyReceipt,
  insertMsg,
  Merger,
  newClientMsgId,
  refuse,
  settle,
  textProblem,
  toResend,
  unreadAfter,
  type Gap,
} from "./sync";
import * as wire from "./wire";

export type Conn = "offline" | "connecting" | "syncing" | "online";

export interface DeviceRow {
  id: number;
  name: string;
  created: number;
  lastActive: number;
  current: boolean;
}

const PAGE = 50;
const ALREADY_EXISTS_CLOSE = 4006;

export class Natter {
  state: DeviceState | null = null;
  conn: Conn = "offline";
  typing: Record<number, { name: string; until: number }> = {};
  openThread = 0;
  announcement = "";
  notice = "";
  groupsAvailable = true;
  readonly api: Api;

  private listeners = new Set<() => void>();
  private socket: Socket | null = null;
  private merger = new Merger();
  private retry = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private lastFrame = 0;
  private heartbeatMs = 5000;
  private ackDirty: Record<number, number> = {};
  private saveTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private typingSentAt = 0;
  private typingStop: ReturnType<typeof setTimeout> | undefined;
  private filling = new Set<number>();

  constructor(private base: string) {
    this.api = makeApi(base, () => this.state?.token ?? "");
    addEventListener("online", () => this.reconnectNow());
    addEventListener("offline", () => this.dropSocket());
    addEventListener("pagehide", () => this.saveNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.openThread) this.markRead(this.openThread);
    });
    setInterval(() => this.expireTyping(), 1000);
  }

  // -- plumbing ------------------------------------------------------------------------------

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(): void {
    for (const fn of this.listeners) fn();
    this.saveSoon();
  }

  private saveSoon(): void {
    if (this.state && this.saveTimer === undefined) {
      this.saveTimer = setTimeout(() => this.saveNow(), 250);
    }
  }

  /** Stores the device's state, then acks what is now stored (and on screen). */
  private saveNow(): void {
    if (this.saveTimer !== undefined) clearTimeout(this.saveTimer);
    this.saveTimer = undefined;
    if (this.state) {
      this.state.cursors = { ...this.merger.cursors };
      saveDevice(this.state);
    }
    this.flushAcks();
  }

  private get s(): DeviceState {
    if (!this.state) throw new Error("not logged in");
    return this.state;
  }

  async boot(): Promise<void> {
    const state = await claimDevice();
    if (state) this.adopt(state);
    this.emit();
  }

  private adopt(state: DeviceState): void {
    this.state = state;
    this.merger = new Merger({ ...state.cursors });
    if (!state.expired) this.start();
  }

  // -- accounts ------------------------------------------------------------------------------

  async register(username: string, password: string, displayName: string): Promise<void> {
    await this.api.accounts.register({ username, password, displayName });
  }

  async login(username: string, password: string, deviceName: string): Promise<void> {
    const res = await this.api.accounts.login({ username, password, deviceName });
    const me = wire.person(res.user);
    const deviceId = Number(res.deviceId);
    const prev = this.state;
    let next: DeviceState;
    if (prev && prev.me.id === me.id) {
      // The token expired or was revoked: same person, new device; nothing typed is lost.
      next = { ...prev, deviceId, token: res.token, me, deviceName, expired: false };
      forgetDevice(prev.deviceId);
    } else {
      next = newDevice(deviceId, res.token, me, deviceName);
    }
    this.stop();
    hold(deviceId);
    this.notice = "";
    this.adopt(next);
    this.saveNow();
    this.emit();
  }

  async logout(): Promise<void> {
    const s = this.state;
    if (!s) return;
    try {
      if (!s.expired) await this.api.accounts.logout({});
    } catch {
      /* offline or already revoked: forget it here anyway */
    }
    this.stop();
    forgetDevice(s.deviceId);
    release();
    this.state = null;
    this.openThread = 0;
    this.emit();
  }

  async devices(): Promise<DeviceRow[]> {
    const res = await this.call(() => this.api.accounts.listDevices({}));
    return res.devices.map((d) => ({
      id: Number(d.deviceId),
      name: d.name,
      created: wire.ms(d.createTime),
      lastActive: wire.ms(d.lastActiveTime),
      current: d.current,
    }));
  }

  /** Runs a call; an UNAUTHENTICATED answer sends the person to log in again. */
  private async call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (isUnauthenticated(e)) this.expire();
      throw e;
    }
  }

  private expire(): void {
    if (!this.state || this.state.expired) return;
    this.state.expired = true;
    this.stop();
    const n = this.state.outbox.length;
    this.notice =
      "Your session has ended; log in again." + (n ? ` ${n} unsent message${n > 1 ? "s are" : " is"} kept.` : "");
    this.saveNow();
    this.emit();
  }

  // -- connection ----------------------------------------------------------------------------

  private start(): void {
    this.connect();
    void this.refreshThreads();
    void this.refreshContacts();
  }

  private stop(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const s = this.socket;
    this.socket = null;
    s?.close(1000, "bye");
    this.stopHeartbeat();
    this.conn = "offline";
  }

  private connect(): void {
    const st = this.state;
    if (!st || st.expired || this.socket) return;
    if (typeof navigator !== "undefined" && navigator.onLine === false) return;
    this.conn = "connecting";
    const socket = new Socket(socketUrl(this.base), st.token, {
      frame: (f) => this.onFrame(socket, f),
      closed: (code, reason) => this.onClosed(socket, code, reason),
    });
    this.socket = socket;
    void socket.ready().then((ok) => {
      if (!ok || this.socket !== socket) return;
      const cursors = Object.entries(this.merger.cursors).map(([t, seq]) =>
        create(CursorSchema, { threadId: BigInt(t), seq: BigInt(seq) }),
      );
      socket.send({ case: "hello", value: create(HelloSchema, { cursors, skipReplay: true, acceptBatches: true }) });
    });
    this.emit();
  }

  private reconnectNow(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.retry = 0;
    if (!this.socket) this.connect();
  }

  private dropSocket(): void {
    const s = this.socket;
    if (s) s.close(1000, "offline"); // onClosed schedules the retry; "online" hurries it
  }

  private onClosed(socket: Socket, code: number, reason: string): void {
    if (this.socket !== socket) return;
    this.socket = null;
    this.stopHeartbeat();
    this.conn = "offline";
    // Whoever was online may not be any more: show the last seen time until the next sync.
    for (const p of Object.values(this.state?.presence ?? {})) p.online = false;
    this.typing = {};
    if (code === UNAUTHENTICATED_CLOSE) {
      this.expire();
      return;
    }
    if (code === ALREADY_EXISTS_CLOSE) {
      this.notice = "This device was opened in another tab; reload to use it here.";
      this.emit();
      return;
    }
    if (code >= 1002 && code <= 1011 && code !== 1006) console.warn("natter: socket closed", code, reason);
    const delay = Math.min(10_000, 250 * 2 ** this.retry) * (0.5 + Math.random() / 2);
    this.retry = Math.min(this.retry + 1, 8);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.connect();
    }, delay);
    this.emit();
  }

  private startHeartbeat(seconds: number): void {
    this.stopHeartbeat();
    this.heartbeatMs = Math.max(1, seconds || 5) * 1000;
    this.lastFrame = Date.now();
    this.heartbeat = setInterval(() => {
      const socket = this.socket;
      if (!socket) return;
      if (Date.now() - this.lastFrame > 3 * this.heartbeatMs + 5000) {
        socket.close(4000, "no answer"); // a silent socket is a dead one
        return;
      }
      socket.send({ case: "heartbeat", value: create(HeartbeatSchema) });
    }, this.heartbeatMs);
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }

  private onFrame(socket: Socket, f: ServerFrame): void {
    if (this.socket !== socket || !this.state) return;
    this.lastFrame = Date.now();
    const st = this.state;
    const p = f.payload;
    switch (p.case) {
      case "batch":
        for (const inner of p.value.frames) if (inner.payload.case !== "batch") this.onFrame(socket, inner);
        return;
      case "welcome":
        this.conn = "syncing";
        this.retry = 0;
        st.me = wire.person(p.value.user);
        this.startHeartbeat(p.value.heartbeatIntervalSeconds);
        for (const pending of toResend(st.outbox)) this.transmit(pending);
        break;
      case "message":
        void this.offer(wire.msg(p.value), true);
        return;
      case "sendResult": {
        const r = p.value;
        const { outbox, done } = settle(st.outbox, r.clientMsgId);
        st.outbox = outbox;
        if (done) {
          void this.offer({
            threadId: Number(r.threadId),
            seq: Number(r.seq),
            msgId: r.msgId,
            sender: st.me,
            senderDevice: st.deviceId,
            clientMsgId: r.clientMsgId,
            system: null,
            text: done.text,
            time: wire.ms(r.createTime),
            state: 1,
          }, true);
        }
        break;
      }
      case "syncDone":
        this.conn = "online";
        void this.afterSync();
        break;
      case "receipt": {
        const r = p.value;
        const t = Number(r.threadId);
        st.members[t] = applyReceipt(
          st.members[t] ?? [],
          wire.person(r.user),
          r.kind === ReceiptKind.READ,
          Number(r.seq),
        );
        break;
      }
      case "presence": {
        const [id, info] = wire.presence(p.value);
        st.presence[id] = info;
        break;
      }
      case "typing": {
        const t = Number(p.value.threadId);
        if (p.value.active) this.typing[t] = { name: wire.person(p.value.user).name, until: Date.now() + 6000 };
        else delete this.typing[t];
        break;
      }
      case "readCursor": {
        const c = p.value.cursor;
        if (!c) break;
        const t = st.threads[Number(c.threadId)];
        if (t && Number(c.seq) > t.readSeq) {
          t.readSeq = Number(c.seq);
          t.unread = t.readSeq >= t.lastSeq ? 0 : unreadAfter(st.messages[t.id] ?? [], t.readSeq, st.me.id);
        }
        break;
      }
      case "error": {
        const e = p.value;
        if (e.clientMsgId) st.outbox = refuse(st.outbox, e.clientMsgId, e.code, e.message);
        else if (e.reason !== "BAD_ACK") console.warn("natter: server refused a frame", e.reason, e.message);
        break;
      }
      default:
        return;
    }
    this.emit();
  }

  // -- receiving -----------------------------------------------------------------------------

  /** Every message enters here: pushed, replayed, fetched; each surfaces once, in order. */
  private async offer(m: Msg, live: boolean): Promise<void> {
    const cursor = this.merger.cursors[m.threadId];
    if (cursor !== undefined && m.seq <= cursor) {
      this.remember(m); // history below the cursor: store it, nothing new to announce
      this.emit();
      return;
    }
    const { released, gap } = this.merger.offer(m);
    for (const r of released) this.surface(r, live);
    this.emit();
    if (gap) await this.fill(gap);
  }

  private async fill(gap: Gap): Promise<void> {
    if (this.filling.has(gap.threadId)) return;
    this.filling.add(gap.threadId);
    try {
      let next: Gap | null = gap;
      for (let round = 0; next && round < 20; round++) {
        const res = await this.call(() =>
          this.api.threads.listMessages({
            threadId: BigInt(next!.threadId),
            afterSeq: BigInt(next!.afterSeq),
            forward: true,
            limit: Math.max(1, Math.min(1000, next!.beforeSeq - next!.afterSeq - 1)),
          }),
        );
        for (const row of res.messages) {
          const { released } = this.merger.offer(wire.msg(row));
          for (const r of released) this.surface(r, false);
        }
        next = this.merger.pendingGap(gap.threadId);
        if (res.messages.length === 0) break;
      }
    } catch {
      /* the next connect replays from the cursor anyway */
    } finally {
      this.filling.delete(gap.threadId);
      this.emit();
    }
  }

  private remember(m: Msg): void {
    const st = this.s;
    st.messages[m.threadId] = insertMsg(st.messages[m.threadId] ?? [], m);
  }

  /** A message new to this device; `live` ones (pushed) count as unread and are announced. */
  private surface(m: Msg, live: boolean): void {
    const st = this.s;
    this.remember(m);
    let t = st.threads[m.threadId];
    if (!t) {
      t = {
        id: m.threadId,
        group: false,
        title: m.sender.id === st.me.id ? "…" : m.sender.name,
        peer: m.sender.id === st.me.id ? null : m.sender,
        lastSeq: 0,
        readSeq: 0,
        unread: 0,
        last: null,
        updated: m.time,
        admin: false,
        members: 2,
        active: true,
      };
      st.threads[m.threadId] = t;
      this.refreshSoon();
    }
    if (m.seq >= (t.last?.seq ?? 0)) {
      t.last = m;
      t.updated = Math.max(t.updated, m.time);
    }
    t.lastSeq = Math.max(t.lastSeq, m.seq);
    if (m.system) this.onSystem(m);
    const mine = m.sender.id === st.me.id;
    if (!(mine && m.senderDevice === st.deviceId)) this.ack(m.threadId, m.seq);
    if (mine) {
      if (m.seq > t.readSeq) t.readSeq = m.seq; // writing is reading
      return;
    }
    if (m.system) return;
    if (this.openThread === m.threadId && document.visibilityState === "visible") {
      this.markRead(m.threadId);
      if (!live) return;
    } else if (!live) {
      return;
    } else if (m.seq > t.readSeq) {
      t.unread += 1;
    }
    this.announcement = `${m.sender.name}${t.group ? ` in ${t.title}` : ""}: ${m.text}`;
  }

  private onSystem(m: Msg): void {
    // Membership or title changed: the list and the member roll are stale.
    delete this.s.members[m.threadId];
    this.refreshSoon();
    if (this.openThread === m.threadId) void this.loadMembers(m.threadId);
  }

  /**
   * The message is in the device's state, which the screen shows; it is acked once that state
   * is saved (saveNow, a few times a second), so an ack never runs ahead of what is stored.
   */
  private ack(threadId: number, seq: number): void {
    if (seq > (this.ackDirty[threadId] ?? 0)) this.ackDirty[threadId] = seq;
    this.saveSoon();
  }

  private flushAcks(): void {
    const dirty = this.ackDirty;
    const cursors = Object.entries(dirty).map(([t, seq]) =>
      create(CursorSchema, { threadId: BigInt(t), seq: BigInt(seq) }),
    );
    // A socket takes acks once it is in sync (before that the server does not know where this
    // device's threads stand). One frame for every thread; not sent: kept for the next sync.
    if (!cursors.length || this.conn !== "online") return;
    if (this.socket?.send({ case: "ack", value: create(AckSchema, { cursors }) })) this.ackDirty = {};
  }

  private async afterSync(): Promise<void> {
    await this.refreshThreads();
    const st = this.state;
    if (!st) return;
    for (const t of Object.values(st.threads)) {
      const cursor = this.merger.cursors[t.id];
      if (cursor !== undefined && t.lastSeq > cursor) {
        await this.fill({ threadId: t.id, afterSeq: cursor, beforeSeq: t.lastSeq + 1 });
      } else if (cursor === undefined && t.unread > 0) {
        await this.loadLatest(t.id);
      }
    }
    if (this.openThread) {
      await this.loadMembers(this.openThread);
      this.markRead(this.openThread);
    }
    void this.refreshPresence();
  }

  // -- lists ---------------------------------------------------------------------------------

  private refreshSoon(): void {
    if (this.refreshTimer !== undefined) return;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      void this.refreshThreads();
    }, 300);
  }

  async refreshThreads(): Promise<void> {
    if (!this.state || this.state.expired) return;
    try {
      const res = await this.call(() => this.api.threads.listThreads({ pageSize: 200 }));
      const st = this.s;
      for (const raw of res.threads) {
        const fresh = wire.thread(raw);
        const old = st.threads[fresh.id];
        if (old?.last && (!fresh.last || old.last.seq > fresh.last.seq)) fresh.last = old.last;
        if (old) fresh.lastSeq = Math.max(fresh.lastSeq, old.lastSeq);
        if (this.openThread === fresh.id && document.visibilityState === "visible") fresh.unread = 0;
        st.threads[fresh.id] = fresh;
      }
      this.emit();
    } catch {
      /* offline: keep the last list */
    }
  }

  async refreshContacts(): Promise<void> {
    if (!this.state || this.state.expired) return;
    try {
      const res = await this.call(() => this.api.contacts.listContacts({ pageSize: 1000 }));
      this.s.contacts = res.contacts.map((c) => ({ person: wire.person(c.user), alias: c.alias }));
      this.emit();
      void this.refreshPresence();
    } catch {
      /* offline */
    }
  }

  async refreshPresence(): Promise<void> {
    const st = this.state;
    if (!st || st.expired) return;
    const names = new Set(st.contacts.map((c) => c.person.username));
    for (const t of Object.values(st.threads)) if (t.peer) names.add(t.peer.username);
    if (names.size === 0) return;
    try {
      const res = await this.api.presence.getPresence({ usernames: [...names].slice(0, 1000) });
      for (const p of res.presences) {
        const [id, info] = wire.presence(p);
        st.presence[id] = info;
      }
      this.emit();
    } catch (e) {
      if (!isUnimplemented(e)) console.warn("natter: presence", problem(e));
    }
  }

  // -- chats ---------------------------------------------------------------------------------

  openChat(threadId: number): void {
    this.openThread = threadId;
    const st = this.state;
    if (!st) return;
    if (!(st.messages[threadId]?.length)) void this.loadLatest(threadId);
    void this.loadMembers(threadId);
    this.markRead(threadId);
    this.emit();
  }

  closeChat(): void {
    this.openThread = 0;
    this.emit();
  }

  async loadLatest(threadId: number): Promise<void> {
    try {
      const res = await this.call(() =>
        this.api.threads.listMessages({ threadId: BigInt(threadId), limit: PAGE }),
      );
      const st = this.s;
      if (st.olderMore[threadId] === undefined || !(st.messages[threadId]?.length)) st.olderMore[threadId] = res.more;
      for (const row of res.messages) await this.offer(wire.msg(row), false);
      if (this.openThread === threadId) this.markRead(threadId);
      this.emit();
    } catch {
      /* offline: what is stored is shown */
    }
  }

  async loadOlder(threadId: number): Promise<void> {
    const st = this.s;
    const list = st.messages[threadId] ?? [];
    const oldest = list[0]?.seq ?? 0;
    if (oldest <= 1) {
      st.olderMore[threadId] = false;
      this.emit();
      return;
    }
    const res = await this.call(() =>
      this.api.threads.listMessages({ threadId: BigInt(threadId), beforeSeq: BigInt(oldest), limit: PAGE }),
    );
    for (const row of res.messages) this.remember(wire.msg(row));
    st.olderMore[threadId] = res.more;
    this.emit();
  }

  async loadMembers(threadId: number): Promise<void> {
    try {
      const res = await this.call(() => this.api.threads.getThread({ threadId: BigInt(threadId) }));
      const st = this.s;
      if (res.thread) {
        const fresh = wire.thread(res.thread);
        const old = st.threads[threadId];
        st.threads[threadId] = old
          ? { ...old, title: fresh.title, group: fresh.group, peer: fresh.peer, admin: fresh.admin, members: fresh.members, active: fresh.active }
          : fresh;
      }
      st.members[threadId] = res.members.map(wire.member);
      this.emit();
    } catch {
      /* offline */
    }
  }

  markRead(threadId: number): void {
    const st = this.state;
    if (!st || document.visibilityState !== "visible") return;
    const t = st.threads[threadId];
    const list = st.messages[threadId] ?? [];
    const last = Math.max(list[list.length - 1]?.seq ?? 0, 0);
    if (!t || last === 0) return;
    if (t.unread !== 0) {
      t.unread = 0;
      this.emit();
    }
    if (last <= t.readSeq) return;
    const sent = this.socket?.send({
      case: "read",
      value: create(ReadSchema, { threadId: BigInt(threadId), seq: BigInt(last) }),
    });
    if (sent) t.readSeq = last; // otherwise read again after the next sync
    this.emit();
  }

  /** Queue a message; it is shown as pending and sent now or when the connection returns. */
  send(threadId: number, text: string): string {
    const why = textProblem(text);
    if (why) return why;
    const pending: Pending = { clientMsgId: newClientMsgId(), threadId, text, time: Date.now(), failed: "" };
    this.s.outbox = [...this.s.outbox, pending];
    this.transmit(pending);
    this.stopTyping(threadId);
    this.saveNow();
    this.emit();
    return "";
  }

  private transmit(p: Pending): void {
    this.socket?.send({
      case: "send",
      value: create(SendSchema, {
        clientMsgId: p.clientMsgId,
        text: p.text,
        target: { case: "threadId", value: BigInt(p.threadId) },
      }),
    });
  }

  retrySend(clientMsgId: string): void {
    const st = this.s;
    st.outbox = st.outbox.map((p) => (p.clientMsgId === clientMsgId ? { ...p, failed: "" } : p));
    const p = st.outbox.find((x) => x.clientMsgId === clientMsgId);
    if (p) this.transmit(p);
    this.emit();
  }

  discard(clientMsgId: string): void {
    this.s.outbox = this.s.outbox.filter((p) => p.clientMsgId !== clientMsgId);
    this.emit();
  }

  typingInput(threadId: number): void {
    const now = Date.now();
    if (now - this.typingSentAt > 3000) {
      this.typingSentAt = now;
      this.socket?.send({ case: "typing", value: create(TypingRequestSchema, { threadId: BigInt(threadId), active: true }) });
    }
    clearTimeout(this.typingStop);
    this.typingStop = setTimeout(() => this.stopTyping(threadId), 4000);
  }

  private stopTyping(threadId: number): void {
    clearTimeout(this.typingStop);
    if (this.typingSentAt === 0) return;
    this.typingSentAt = 0;
    this.socket?.send({ case: "typing", value: create(TypingRequestSchema, { threadId: BigInt(threadId), active: false }) });
  }

  private expireTyping(): void {
    const now = Date.now();
    let changed = false;
    for (const [t, v] of Object.entries(this.typing)) {
      if (v.until < now) {
        delete this.typing[Number(t)];
        changed = true;
      }
    }
    if (changed) this.emit();
  }

  // -- contacts and groups -------------------------------------------------------------------

  async addContact(username: string, alias = ""): Promise<ContactInfo> {
    const res = await this.call(() => this.api.contacts.addContact({ username, alias }));
    const c = { person: wire.person(res.contact?.user), alias: res.contact?.alias ?? "" };
    const st = this.s;
    st.contacts = [...st.contacts.filter((x) => x.person.id !== c.person.id), c].sort((a, b) =>
      a.person.username.localeCompare(b.person.username),
    );
    this.emit();
    void this.refreshPresence();
    return c;
  }

  async removeContact(username: string): Promise<void> {
    await this.call(() => this.api.contacts.removeContact({ username }));
    this.s.contacts = this.s.contacts.filter((c) => c.person.username !== username);
    this.emit();
  }

  private upsert(t: ThreadInfo): number {
    const st = this.s;
    const old = st.threads[t.id];
    st.threads[t.id] = old ? { ...t, last: old.last ?? t.last, unread: old.unread } : t;
    this.emit();
    return t.id;
  }

  async directThread(username: string): Promise<number> {
    const res = await this.call(() => this.api.threads.getDirectThread({ username }));
    if (!res.thread) throw new Error("no thread");
    return this.upsert(wire.thread(res.thread));
  }

  async createGroup(title: string, members: string[]): Promise<number> {
    const res = await this.call(() => this.api.groups.createGroup({ title, members }));
    if (!res.thread) throw new Error("no thread");
    return this.upsert(wire.thread(res.thread));
  }

  async addMembers(threadId: number, members: string[]): Promise<void> {
    await this.call(() => this.api.groups.addMembers({ threadId: BigInt(threadId), members }));
    await this.loadMembers(threadId);
  }

  async removeMembers(threadId: number, members: string[]): Promise<void> {
    await this.call(() => this.api.groups.removeMembers({ threadId: BigInt(threadId), members }));
    await this.loadMembers(threadId);
  }

  async renameGroup(threadId: number, title: string): Promise<void> {
    await this.call(() => this.api.groups.renameGroup({ threadId: BigInt(threadId), title }));
    await this.loadMembers(threadId);
  }

  async leaveGroup(threadId: number): Promise<void> {
    await this.call(() => this.api.groups.leaveGroup({ threadId: BigInt(threadId) }));
    await this.refreshThreads();
  }

  members(threadId: number): MemberInfo[] | undefined {
    return this.state?.members[threadId];
  }
}
