// The app's controller: one device's state, its connection (the @natter/client SDK), and every action.
import { newClientMsgId, NotificationPreview, ReportReason, upload, type Connection, type Event, type PendingSend } from "@natter/client";
import type { Message } from "@natter/client/v1";
import { ReceiptKind } from "@natter/client/v1";
import { webConnection } from "@natter/client/web";
import { type Api, isUnauthenticated, isUnimplemented, makeApi, problem } from "./api";
import {
  newDevice,
  type ContactInfo,
  type DeviceState,
  type MemberInfo,
  type Att,
  type Msg,
  type Pending,
  type Person,
  type ThreadInfo,
} from "./model";
import { applyTheme, loadPrefs, savePrefs, type Prefs } from "./prefs";
import { claimDevice, forgetDevice, hold, release, saveDevice } from "./store";
import { applyEvent, isEvent } from "./fold";
import { applyReceipt, insertMsg, MAX_TEXT_BYTES, settle, textProblem, toResend, unreadAfter } from "./sync";
import * as wire from "./wire";

export type Conn = "offline" | "connecting" | "syncing" | "online";

export { NotificationPreview, ReportReason };

/** The account's own settings, from GetMe. */
export interface MeInfo {
  hideLastSeen: boolean;
  preview: NotificationPreview;
  admin: boolean;
  phone: string;
}

export interface DeviceRow {
  id: number;
  name: string;
  platform: string;
  created: number;
  lastActive: number;
  current: boolean;
}

const PAGE = 50;
/** How many connection log entries a tab keeps (the oldest go first). */
export const LOG_SIZE = 300;

/** One step of the connection state machine, or of the login around it: what happened, and the state after it. */
export interface LogEntry {
  at: number; // ms since the epoch
  event: string;
  detail: string;
  conn: Conn;
}

/** A file on its way up: shown in the composer with its progress, retried from where it stopped. */
export interface Upload {
  key: string;
  threadId: number;
  file: File;
  voice: boolean;
  durationMs: number;
  sent: number;
  uploadId: string;
  error: string;
  done: Att | null;
  preview: string; // a blob: URL for images and recordings
}

/** A search hit, ready to show and to jump to. */
export interface Hit {
  threadId: number;
  seq: number;
  title: string;
  m: Msg;
}

export function pendingSend(p: Pending): PendingSend {
  return {
    clientMsgId: p.clientMsgId,
    text: p.text,
    threadId: p.threadId,
    ...(p.attachments?.length ? { attachmentIds: p.attachments.map((a) => a.id) } : {}),
    ...(p.replyToSeq ? { replyToSeq: p.replyToSeq } : {}),
    ...(p.change ?? {}),
  };
}

export class Natter {
  state: DeviceState | null = null;
  conn: Conn = "offline";
  typing: Record<number, { name: string; userId: number; until: number }> = {};
  openThread = 0;
  announcement = "";
  notice = "";
  groupsAvailable = true;
  /** GetMe's settings, once loaded. */
  me: MeInfo | null = null;
  /** People the user blocked, by id. */
  blocked: Record<number, Person> = {};
  prefs: Prefs = loadPrefs();
  /** Show the "turn on notifications?" prompt (after the first message sent here). */
  askPush = false;
  uploads: Upload[] = [];
  /** Per thread: the message the composer replies to, or the one it edits. */
  draft: Record<number, { reply?: Msg; edit?: Msg }> = {};
  /** Where the open chat should scroll to (a search hit, a tapped quote), once it is loaded. */
  jump: { threadId: number; seq: number; at: number } | null = null;
  /** The connection's recent history, newest last: what the debug page shows. */
  log: LogEntry[] = [];
  readonly api: Api;
  private links = new Map<string, { url: string; thumbnailUrl: string; expireMs: number }>();
  private linkWaits = new Map<string, Promise<void>>();

  private listeners = new Set<() => void>();
  private connection: Connection | null = null;
  private ackDirty: Record<number, number> = {};
  private saveTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private typingStop: ReturnType<typeof setTimeout> | undefined;

  constructor(private base: string) {
    this.api = makeApi(base, () => this.state?.token ?? "");
    addEventListener("online", () => {
      this.note("browser online", this.connection ? "reconnecting now" : "no connection");
      this.connection?.reconnect();
    });
    addEventListener("offline", () => {
      this.note("browser offline", "");
      this.connection?.interrupt();
    });
    addEventListener("pagehide", () => this.saveNow());
    document.addEventListener("visibilitychange", () => {
      const visible = document.visibilityState === "visible";
      this.connection?.setForeground(visible); // a visible tab with a live stream gets no pushes
      if (visible && this.openThread) this.markRead(this.openThread);
    });
    applyTheme(this.prefs.theme);
    setInterval(() => this.expireTyping(), 1000);
  }

  // -- plumbing ------------------------------------------------------------------------------

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Records a step in the connection log (and the console's debug level), then shows it. */
  note(event: string, detail: string, conn: Conn = this.conn): void {
    this.conn = conn;
    const entry = { at: Date.now(), event, detail, conn };
    this.log = this.log.length >= LOG_SIZE ? [...this.log.slice(1 - LOG_SIZE), entry] : [...this.log, entry];
    console.debug(`natter: ${event}${detail ? `: ${detail}` : ""} → ${conn}`);
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
      if (this.connection) this.state.cursors = { ...this.connection.merger.cursors };
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
    this.note("boot", state ? `device ${state.deviceId}${state.expired ? " (session ended)" : ""}` : "no device in this tab");
    if (state) this.adopt(state);
    this.emit();
  }

  private adopt(state: DeviceState): void {
    this.state = state;
    if (!state.expired) this.start();
  }

  // -- accounts ------------------------------------------------------------------------------

  async register(username: string, password: string, displayName: string): Promise<void> {
    this.note("register", username);
    try {
      await this.api.accounts.register({ username, password, displayName });
    } catch (e) {
      this.note("register failed", problem(e));
      throw e;
    }
    this.note("registered", username);
  }

  async login(username: string, password: string, deviceName: string): Promise<void> {
    this.note("log in", username);
    const asked = Date.now();
    let res;
    try {
      res = await this.api.accounts.login({ username, password, deviceName });
    } catch (e) {
      this.note("log in failed", `${problem(e)} after ${Date.now() - asked} ms`);
      this.emit();
      throw e;
    }
    this.note("logged in", `device ${res.deviceId} after ${Date.now() - asked} ms`);
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
    this.note("logged out", `device ${s.deviceId}`);
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
      platform: d.platform,
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
    this.note("session ended", "log in again");
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
    void this.refreshAccount().catch(() => undefined);
    if (this.prefs.push && pushSupported() && Notification.permission === "granted") {
      void this.enablePush().catch(() => undefined); // endpoints change: register again
    }
  }

  private stop(): void {
    const c = this.connection;
    this.connection = null;
    if (c) {
      void c.close();
      this.note("close", "", "offline");
    }
    this.conn = "offline";
  }

  /**
   * One Connection per device (the SDK): it resends the outbox, resumes from the cursors of what
   * is stored here, fills gaps, heartbeats and reconnects; messages are acked once saved.
   */
  private connect(): void {
    const st = this.state;
    if (!st || st.expired || this.connection) return;
    const c = webConnection(this.api.client, this.base, {
      cursors: { ...st.cursors },
      skipReplay: true,
      autoAck: false,
      outbox: toResend(st.outbox).map(pendingSend),
      userLogSeq: st.userLogSeq ?? 0,
      foreground: document.visibilityState === "visible",
    });
    this.connection = c;
    c.subscribe((ev) => this.onEvent(c, ev));
    this.note("connect", `device ${st.deviceId}, ${Object.keys(st.cursors).length} cursors, ${st.outbox.length} waiting`, "connecting");
    void c.start(false);
    this.emit();
  }

  private onEvent(c: Connection, ev: Event): void {
    if (this.connection !== c || !this.state) return;
    const st = this.state;
    switch (ev.type) {
      case "connected":
        this.note("welcome", `node ${ev.nodeId || "?"}${ev.address ? ` at ${ev.address}` : ""}, heartbeat ${ev.heartbeatSeconds} s`, "syncing");
        st.me = wire.person(ev.user);
        break;
      case "message":
        this.onMessage(ev.message, ev.source === "stream");
        return;
      case "sync-done":
        this.note("sync done", `${ev.replayed} replayed`, "online");
        void this.afterSync();
        break;
      case "disconnected":
        this.note(ev.final ? "disconnected for good" : "disconnected", ev.reason, "offline");
        // Whoever was online may not be any more: show the last seen time until the next sync.
        for (const p of Object.values(st.presence)) p.online = false;
        this.typing = {};
        if (ev.final && ev.error?.unauthenticated) {
          this.expire();
          return;
        }
        if (ev.final) {
          this.notice = "This device was opened in another tab; reload to use it here.";
          this.connection = null;
        }
        break;
      case "receipt": {
        const r = ev.receipt;
        const t = Number(r.threadId);
        st.members[t] = applyReceipt(st.members[t] ?? [], wire.person(r.user), r.kind === ReceiptKind.READ, Number(r.seq));
        break;
      }
      case "presence": {
        const [id, info] = wire.presence(ev.presence);
        st.presence[id] = info;
        break;
      }
      case "typing": {
        const t = Number(ev.typing.threadId);
        const who = wire.person(ev.typing.user);
        if (ev.typing.active) this.typing[t] = { name: who.name, userId: who.id, until: Date.now() + 6000 };
        else if (this.typing[t]?.userId === who.id) delete this.typing[t];
        break;
      }
      case "thread-mute": {
        const t = st.threads[ev.threadId];
        if (t) st.threads[ev.threadId] = { ...t, muted: ev.muted, muteUntil: ev.muted ? ev.until : 0 };
        break;
      }
      case "read-cursor": {
        const t = st.threads[ev.threadId];
        if (t && ev.seq > t.readSeq) {
          t.readSeq = ev.seq;
          t.unread = t.readSeq >= t.lastSeq ? 0 : unreadAfter(st.messages[t.id] ?? [], t.readSeq, st.me.id);
        }
        break;
      }
      case "send-failed":
        // A refusal that retrying cannot fix: shown with the reason, to retry or delete.
        st.outbox = st.outbox.map((p) =>
          p.clientMsgId === ev.clientMsgId ? { ...p, failed: ev.error.message || "refused" } : p,
        );
        break;
      case "profile":
        this.applyProfile(wire.person(ev.user));
        break;
      case "user-change": {
        const c = ev.change;
        if (c.message) this.hide(Number(c.message.threadId), Number(c.message.seq));
        st.userLogSeq = Math.max(st.userLogSeq ?? 0, Number(c.seq));
        break;
      }
      case "rejected":
        if (ev.error.reason !== "BAD_ACK") console.warn("natter: server refused a frame", ev.error.reason, ev.error.message);
        break;
      default:
        return;
    }
    this.emit();
  }

  // -- receiving -----------------------------------------------------------------------------

  /** Every message the connection releases (pushed, replayed, fetched): each once, in order. */
  private onMessage(raw: Message, live: boolean): void {
    const st = this.s;
    const m = wire.msg(raw);
    if (m.sender.id === st.me.id && m.senderDevice === st.deviceId && m.clientMsgId) {
      st.outbox = settle(st.outbox, m.clientMsgId).outbox; // stored: no longer pending
    }
    if (isEvent(m)) this.foldEvent(m);
    else this.surface(m, live);
    this.emit();
  }

  /** A reaction, edit or delete: folded onto its message (or kept until that is loaded), acked. */
  private foldEvent(ev: Msg): void {
    const st = this.s;
    const list = st.messages[ev.threadId] ?? [];
    const i = list.findIndex((x) => x.seq === ev.targetSeq);
    if (i >= 0) {
      const copy = list.slice();
      copy[i] = applyEvent(list[i], ev);
      st.messages[ev.threadId] = copy;
      const t = st.threads[ev.threadId];
      if (t?.last?.seq === copy[i].seq) t.last = copy[i];
    } else {
      const orphans = (st.orphans ??= {});
      orphans[ev.threadId] = [...(orphans[ev.threadId] ?? []), ev].slice(-500);
    }
    const t = st.threads[ev.threadId];
    if (t) t.lastSeq = Math.max(t.lastSeq, ev.seq);
    if (!(ev.sender.id === st.me.id && ev.senderDevice === st.deviceId)) this.ack(ev.threadId, ev.seq);
  }

  /** Deleted for me (on any of my devices): hidden here, now or when it is loaded. */
  private hide(threadId: number, seq: number): void {
    const st = this.s;
    const list = st.messages[threadId] ?? [];
    const i = list.findIndex((x) => x.seq === seq);
    if (i >= 0) {
      const copy = list.slice();
      copy[i] = { ...list[i], hidden: true, text: "", attachments: [] };
      st.messages[threadId] = copy;
    } else {
      st.hiddenKeys = [...(st.hiddenKeys ?? []), `${threadId}:${seq}`].slice(-2000);
    }
  }

  /** History rows: those at or below what arrived are only stored; the rest go through the merge. */
  private async mergeHistory(rows: Message[]): Promise<void> {
    const c = this.connection;
    const fresh: Message[] = [];
    for (const row of rows) {
      const cursor = c?.merger.cursors[Number(row.threadId)];
      if (c && (cursor === undefined || Number(row.seq) > cursor)) fresh.push(row);
      else this.remember(wire.msg(row)); // nothing new to announce
    }
    if (c && fresh.length) await c.merge(fresh);
    this.emit();
  }

  private remember(m: Msg): void {
    const st = this.s;
    if (isEvent(m)) {
      this.foldEvent(m);
      return;
    }
    const key = `${m.threadId}:${m.seq}`;
    if (st.hiddenKeys?.includes(key)) {
      m = { ...m, hidden: true, text: "", attachments: [] };
      st.hiddenKeys = st.hiddenKeys.filter((k) => k !== key);
    }
    const orphans = st.orphans?.[m.threadId];
    if (orphans?.length) {
      for (const ev of orphans) if (ev.targetSeq === m.seq) m = applyEvent(m, ev);
      st.orphans![m.threadId] = orphans.filter((ev) => ev.targetSeq !== m.seq);
    }
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
    // Their message is what they were typing: the indicator ends with it.
    if (this.typing[m.threadId]?.userId === m.sender.id) delete this.typing[m.threadId];
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
    const what = m.text || (m.attachments?.length ? (m.attachments[0].voice ? "a voice note" : m.attachments[0].name) : "");
    this.announcement = `${m.sender.name}${t.group ? ` in ${t.title}` : ""}: ${what}`;
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

  /** Hands what is now saved to the connection, which acks it (coalesced, once in sync). */
  private flushAcks(): void {
    const c = this.connection;
    if (!c) return;
    for (const [t, seq] of Object.entries(this.ackDirty)) c.ack(Number(t), seq);
    this.ackDirty = {};
  }

  private async afterSync(): Promise<void> {
    await this.refreshThreads();
    const st = this.state;
    if (!st) return;
    const c = this.connection;
    if (!c) return;
    for (const t of Object.values(st.threads)) {
      const cursor = c.merger.cursors[t.id];
      if (cursor !== undefined && t.lastSeq > cursor) {
        try {
          await c.catchUp(t.id, t.lastSeq);
        } catch {
          /* the next connect replays from the cursor anyway */
        }
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
    } catch (e) {
      this.note("chat list not refreshed", problem(e)); // offline: keep the last list
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
      await this.mergeHistory(res.messages);
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
    if (last <= t.readSeq || !this.connection) return;
    this.connection.read(threadId, last); // sent now, or after the next sync
    t.readSeq = last;
    this.emit();
  }

  /** Queue a message; it is shown as pending and sent now or when the connection returns. */
  send(threadId: number, text: string, extras: { attachments?: Att[]; replyToSeq?: number } = {}): string {
    const why = extras.attachments?.length ? (new TextEncoder().encode(text).length > MAX_TEXT_BYTES ? textProblem(text) : "") : textProblem(text);
    if (why) return why;
    const pending: Pending = { clientMsgId: newClientMsgId(), threadId, text, time: Date.now(), failed: "", ...extras };
    this.s.outbox = [...this.s.outbox, pending];
    this.transmit(pending);
    this.stopTyping(threadId);
    if (!this.prefs.pushAsked && pushSupported() && Notification.permission === "default") this.askPush = true;
    this.emit();
    // Stored right after the frame that shows it: serialising a long history first would delay
    // the bubble, and the message is already on its way (the connection keeps it until acked).
    requestAnimationFrame(() => setTimeout(() => this.saveNow(), 0));
    return "";
  }

  private transmit(p: Pending): void {
    // Settled by the message event (stored) or the send-failed event (refused for good).
    void this.connection?.send(p.text, pendingSend(p)).catch(() => undefined);
  }

  /** A change to a sent message (or a forward), through the outbox like a message. */
  private change(threadId: number, change: NonNullable<Pending["change"]>, text = ""): void {
    const p: Pending = { clientMsgId: newClientMsgId(), threadId, text, time: Date.now(), failed: "", change };
    this.s.outbox = [...this.s.outbox, p];
    this.transmit(p);
    this.saveNow();
    this.emit();
  }

  react(threadId: number, seq: number, emoji: string): void {
    const mine = this.s.messages[threadId]?.find((m) => m.seq === seq)?.reactions?.[this.s.me.id];
    this.change(threadId, { react: { seq, emoji: mine?.emoji === emoji ? "" : emoji } }); // the same again removes it
  }

  edit(threadId: number, seq: number, text: string): string {
    const why = textProblem(text);
    if (why) return why;
    this.change(threadId, { edit: { seq } }, text);
    return "";
  }

  deleteForEveryone(threadId: number, seq: number): void {
    this.change(threadId, { delete: { seq } });
  }

  forward(from: { threadId: number; seq: number }, toThread: number): void {
    this.change(toThread, { forward: from });
  }

  /** Delete for me: hidden on all of this user's devices, nobody else's. */
  async deleteForMe(threadId: number, seq: number): Promise<void> {
    await this.call(() => this.api.client.hideMessages(threadId, [seq]));
    this.hide(threadId, seq); // the user change log brings it too; this shows it at once
    this.emit();
  }

  setDraft(threadId: number, d: { reply?: Msg; edit?: Msg }): void {
    this.draft = { ...this.draft, [threadId]: d };
    this.emit();
  }

  /** Searches the user's messages; each hit jumps to its message. */
  async search(query: string, threadId = 0): Promise<Hit[]> {
    const res = await this.call(() => this.api.client.search(query, { threadId, pageSize: 30 }));
    return res.messages.map((raw) => {
      const m = wire.msg(raw);
      return { threadId: m.threadId, seq: m.seq, title: this.s.threads[m.threadId]?.title ?? "", m };
    });
  }

  /** Opens history around a message and asks the list to scroll to it. */
  async jumpTo(threadId: number, seq: number): Promise<void> {
    const st = this.s;
    if (!st.messages[threadId]?.some((m) => m.seq === seq)) {
      const [before, after] = await Promise.all([
        this.call(() => this.api.threads.listMessages({ threadId: BigInt(threadId), beforeSeq: BigInt(seq + 1), limit: PAGE })),
        this.call(() => this.api.threads.listMessages({ threadId: BigInt(threadId), afterSeq: BigInt(seq), limit: PAGE, forward: true })),
      ]);
      for (const row of [...before.messages, ...after.messages]) this.remember(wire.msg(row));
      // What lies between the loaded page and the newest is paged in by scrolling.
    }
    this.jump = { threadId, seq, at: Date.now() };
    this.emit();
  }

  /** Signed links for an attachment (cached until shortly before they expire). */
  link(id: string): { url: string; thumbnailUrl: string } | undefined {
    const l = this.links.get(id);
    if (l && l.expireMs - Date.now() > 60_000) return l;
    if (!this.linkWaits.has(id) && this.state && !this.state.expired) {
      const wait = this.api.client
        .attachmentLinks(id)
        .then((fresh) => {
          this.links.set(id, fresh);
          this.emit();
        })
        .catch(() => undefined)
        .finally(() => setTimeout(() => this.linkWaits.delete(id), 5000));
      this.linkWaits.set(id, wait);
    }
    return l;
  }

  /** Starts uploading a file for the thread; it shows in the composer and sends with the next message. */
  attach(threadId: number, file: File, voice = false, durationMs = 0): void {
    const u: Upload = {
      key: newClientMsgId(),
      threadId,
      file,
      voice,
      durationMs,
      sent: 0,
      uploadId: "",
      error: "",
      done: null,
      preview: /^(image|audio)\//.test(file.type) ? URL.createObjectURL(file) : "",
    };
    this.uploads = [...this.uploads, u];
    void this.runUpload(u.key);
    this.emit();
  }

  retryUpload(key: string): void {
    void this.runUpload(key);
  }

  dropUpload(key: string): void {
    const u = this.uploads.find((x) => x.key === key);
    if (u?.preview) URL.revokeObjectURL(u.preview);
    this.uploads = this.uploads.filter((x) => x.key !== key);
    this.emit();
  }

  private patchUpload(key: string, patch: Partial<Upload>): void {
    this.uploads = this.uploads.map((x) => (x.key === key ? { ...x, ...patch } : x));
    this.emit();
  }

  private async runUpload(key: string): Promise<void> {
    const u = this.uploads.find((x) => x.key === key);
    if (!u || !this.state) return;
    this.patchUpload(key, { error: "" });
    try {
      const att = await upload(
        u.file,
        { name: u.file.name || (u.voice ? "voice-note.webm" : "file"), type: u.file.type || "application/octet-stream", voiceNote: u.voice, durationMs: u.durationMs },
        {
          baseUrl: this.base,
          token: this.state.token,
          uploadId: u.uploadId || undefined,
          chunkBytes: 256 * 1024,
          started: (uploadId) => this.patchUpload(key, { uploadId }),
          progress: (sent) => this.patchUpload(key, { sent }),
        },
      );
      this.patchUpload(key, { done: wire.attachment(att), sent: u.file.size });
    } catch (e) {
      this.patchUpload(key, { error: problem(e) });
    }
  }

  /** Sends the thread's finished uploads with the caption (and the quote); "" or why not. */
  sendWithUploads(threadId: number, text: string, replyToSeq = 0): string {
    const mine = this.uploads.filter((u) => u.threadId === threadId);
    if (!mine.length) return this.send(threadId, text, replyToSeq ? { replyToSeq } : {});
    if (mine.some((u) => !u.done)) return "Wait for the files to finish uploading (or remove them).";
    const why = this.send(threadId, text, { attachments: mine.map((u) => u.done!), ...(replyToSeq ? { replyToSeq } : {}) });
    if (!why) for (const u of mine) this.dropUpload(u.key);
    return why;
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

  /** The composer changed: typing while it holds text (paced by the SDK), stopped when cleared or after a pause. */
  typingInput(threadId: number, text = " "): void {
    clearTimeout(this.typingStop);
    if (!text.trim()) {
      this.stopTyping(threadId);
      return;
    }
    this.connection?.typing(threadId, true);
    this.typingStop = setTimeout(() => this.stopTyping(threadId), 5000);
  }

  private stopTyping(threadId: number): void {
    clearTimeout(this.typingStop);
    this.connection?.typing(threadId, false);
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

  /** A thread's messages as shown: in groups, without those of blocked people when the user hides them. */
  shown(threadId: number, list: Msg[]): Msg[] {
    if (!this.prefs.hideBlocked || !this.state?.threads[threadId]?.group) return list;
    return list.filter((m) => m.system || !this.blocked[m.sender.id]);
  }

  // -- settings (web/src/ui/Settings.tsx) ---------------------------------------------------

  setPrefs(change: Partial<Prefs>): void {
    this.prefs = { ...this.prefs, ...change };
    savePrefs(this.prefs);
    applyTheme(this.prefs.theme);
    this.emit();
  }

  async refreshAccount(): Promise<void> {
    const client = this.api.client;
    const [me, blocked] = await Promise.all([this.call(() => client.me()), this.call(() => client.blocked())]);
    this.me = { hideLastSeen: me.hideLastSeen, preview: me.notificationPreview, admin: me.isAdmin, phone: me.phone };
    if (this.state && me.user) this.state.me = wire.person(me.user);
    this.blocked = Object.fromEntries(blocked.map((u) => [Number(u.userId), wire.person(u)]));
    this.emit();
  }

  async updateProfile(displayName: string, about?: string): Promise<void> {
    await this.call(() => this.api.client.updateSettings({ displayName, ...(about === undefined ? {} : { about }) }));
    await this.refreshAccount();
  }

  /** Uploads an image through the attachment store and makes it the profile picture. */
  async setPicture(file: File): Promise<void> {
    const att = await this.call(() =>
      upload(file, { name: file.name || "picture", type: file.type || "application/octet-stream" }, { baseUrl: this.base, token: this.s.token, chunkBytes: 256 * 1024 }),
    );
    await this.call(() => this.api.client.updateSettings({ pictureId: att.attachmentId }));
    await this.refreshAccount();
  }

  async removePicture(): Promise<void> {
    await this.call(() => this.api.client.updateSettings({ pictureId: "" }));
    await this.refreshAccount();
  }

  /** A profile change pushed by the server: every place that shows the person follows it. */
  private applyProfile(p: Person): void {
    const st = this.s;
    if (p.id === st.me.id) st.me = p;
    for (const t of Object.values(st.threads)) {
      if (t.peer?.id === p.id) st.threads[t.id] = { ...t, peer: p, title: t.group ? t.title : p.name };
    }
    st.contacts = st.contacts.map((c) => (c.person.id === p.id ? { ...c, person: p } : c));
    for (const [t, list] of Object.entries(st.members)) {
      if (list.some((m) => m.person.id === p.id)) st.members[Number(t)] = list.map((m) => (m.person.id === p.id ? { ...m, person: p } : m));
    }
  }

  /** Who a direct chat is with, with the profile as last heard. */
  peerOf(threadId: number): Person | null {
    const t = this.state?.threads[threadId];
    return t && !t.group ? t.peer : null;
  }

  async setHideLastSeen(hide: boolean): Promise<void> {
    await this.changeMe({ hideLastSeen: hide }, () => this.api.client.updateSettings({ hideLastSeen: hide }));
  }

  async setPreview(preview: NotificationPreview): Promise<void> {
    await this.changeMe({ preview }, () => this.api.client.updateSettings({ notificationPreview: preview }));
  }

  /** Shows a setting changed at once (the switch follows the finger), then asks the server; put back if refused. */
  private async changeMe(change: Partial<MeInfo>, fn: () => Promise<void>): Promise<void> {
    if (this.me) {
      this.me = { ...this.me, ...change };
      this.emit();
    }
    try {
      await this.call(fn);
    } finally {
      await this.refreshAccount().catch(() => undefined);
    }
  }

  async block(p: Person): Promise<void> {
    await this.call(() => this.api.client.block(p.username));
    this.blocked = { ...this.blocked, [p.id]: p };
    this.emit();
  }

  async unblock(p: Person): Promise<void> {
    await this.call(() => this.api.client.unblock(p.username));
    const rest = { ...this.blocked };
    delete rest[p.id];
    this.blocked = rest;
    this.emit();
  }

  /**
   * Reports a person, or messages of a thread (copied for the admins); `block` blocks the
   * sender too. The message action of a bubble calls this with the message's thread and seq.
   */
  async report(r: { username?: string; threadId?: number; seqs?: number[]; reason: ReportReason; text?: string; block?: boolean }): Promise<number> {
    const id = await this.call(() => this.api.client.report(r));
    if (r.block) await this.refreshAccount();
    return id;
  }

  /** No notifications for a chat: for `seconds`, or until unmuted (0). */
  async mute(threadId: number, seconds = 0): Promise<void> {
    const t = await this.call(() => this.api.client.mute(threadId, seconds));
    if (t) this.upsert(wire.thread(t));
  }

  async unmute(threadId: number): Promise<void> {
    const t = await this.call(() => this.api.client.unmute(threadId));
    if (t) this.upsert(wire.thread(t));
  }

  async revokeDevice(deviceId: number): Promise<void> {
    await this.call(() => this.api.client.revokeDevice(deviceId));
  }

  async revokeOtherDevices(): Promise<number> {
    return this.call(() => this.api.client.revokeOtherDevices());
  }

  async changePassword(current: string, next: string, keepOthers: boolean): Promise<number> {
    return (await this.call(() => this.api.client.changePassword(current, next, keepOthers))).length;
  }

  /** Deletes the account (given its password) and forgets it in this browser. */
  async deleteAccount(password: string): Promise<void> {
    await this.api.client.deleteAccount(password);
    const s = this.state;
    this.stop();
    if (s) forgetDevice(s.deviceId);
    release();
    this.state = null;
    this.me = null;
    this.openThread = 0;
    this.emit();
  }

  /** Whether the server holds a push target for this device. */
  async pushOn(): Promise<boolean> {
    return Boolean(await this.call(() => this.api.client.pushTarget()));
  }

  /**
   * Turns notifications on for this device: permission, a subscription through the service
   * worker with the server's VAPID key, and the subscription registered as this device's
   * push target. Resolves with a sentence when it cannot, "" when it did.
   */
  async enablePush(): Promise<string> {
    this.askPush = false;
    this.setPrefs({ pushAsked: true });
    if (!pushSupported()) return "This browser cannot show notifications from a web page here (it needs https).";
    const permission = await Notification.requestPermission();
    if (permission !== "granted") return "Notifications are blocked for this site: allow them in the browser's site settings.";
    const config = await this.call(() => this.api.client.pushConfig());
    if (!config.webPushEnabled || !config.vapidPublicKey) return "This server does not send notifications.";
    const registration = await navigator.serviceWorker.ready;
    const key = fromBase64Url(config.vapidPublicKey);
    let sub = await registration.pushManager.getSubscription();
    if (sub && !sameKey(sub.options.applicationServerKey, key)) {
      await sub.unsubscribe(); // the server's key changed: the old subscription is dead
      sub = null;
    }
    sub ??= await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    const json = sub.toJSON();
    await this.call(() =>
      this.api.client.setWebPush({ endpoint: json.endpoint ?? "", p256dh: json.keys?.p256dh ?? "", auth: json.keys?.auth ?? "" }),
    );
    this.setPrefs({ push: true });
    return "";
  }

  async disablePush(): Promise<void> {
    this.setPrefs({ push: false });
    await this.call(() => this.api.client.deletePushTarget());
    if (pushSupported()) {
      const sub = await (await navigator.serviceWorker.ready).pushManager.getSubscription();
      await sub?.unsubscribe();
    }
  }

  dismissPushPrompt(): void {
    this.askPush = false;
    this.setPrefs({ pushAsked: true });
  }
}

function pushSupported(): boolean {
  return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window && isSecureContext;
}

function fromBase64Url(s: string): Uint8Array<ArrayBuffer> {
  const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/"));
  const out = new Uint8Array(new ArrayBuffer(bin.length));
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function sameKey(a: ArrayBuffer | null, b: Uint8Array): boolean {
  if (!a) return false;
  const x = new Uint8Array(a);
  return x.length === b.length && x.every((v, i) => v === b[i]);
}
