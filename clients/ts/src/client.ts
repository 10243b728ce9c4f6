// The unary side: typed calls over the public services through any Connect transport.
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { NatterError } from "./errors.js";
import { AccountService, type GetMeResponse } from "./gen/natter/v1/account_service_pb.js";
import { ContactService, type Contact } from "./gen/natter/v1/contact_service_pb.js";
import { GroupService } from "./gen/natter/v1/group_service_pb.js";
import { MediaService } from "./gen/natter/v1/media_service_pb.js";
import { PresenceService } from "./gen/natter/v1/presence_service_pb.js";
import { PushService, type GetPushConfigResponse, type PushTarget } from "./gen/natter/v1/push_service_pb.js";
import { ReportReason, SafetyService } from "./gen/natter/v1/safety_service_pb.js";
import { SocketService } from "./gen/natter/v1/socket_service_pb.js";
import { ThreadService } from "./gen/natter/v1/thread_service_pb.js";
import {
  MemberRole,
  NotificationPreview,
  type Device,
  type Message,
  type Presence,
  type Thread,
  type User,
  type UserChange,
} from "./gen/natter/v1/types_pb.js";

/** The service clients, for calls the typed helpers do not cover (they throw ConnectError). */
export interface Services {
  accounts: Client<typeof AccountService>;
  contacts: Client<typeof ContactService>;
  threads: Client<typeof ThreadService>;
  groups: Client<typeof GroupService>;
  presence: Client<typeof PresenceService>;
  socket: Client<typeof SocketService>;
  media: Client<typeof MediaService>;
  safety: Client<typeof SafetyService>;
  push: Client<typeof PushService>;
}

/** What UpdateSettings changes; fields left out keep their value. */
export interface SettingsChange {
  displayName?: string;
  hideLastSeen?: boolean;
  /** Privacy mode of push notifications: what they show. */
  notificationPreview?: NotificationPreview;
  /** The status line ("about"): at most 140 characters on one line; "" clears it. */
  about?: string;
  /** The profile picture: an image the user uploaded (`upload`), by attachment id; "" removes it. */
  pictureId?: string;
}

/** A browser's push subscription, as `PushSubscription.toJSON()` gives it. */
export interface WebPushKeys {
  endpoint: string;
  p256dh: string;
  auth: string;
}

export { NotificationPreview, ReportReason };

export interface HistoryPage {
  messages: Message[];
  more: boolean;
}

/** Adds `Authorization: Bearer <token>` to every request a transport makes. */
export function withToken(transport: Transport, token: () => string): Transport {
  const auth = (header: HeadersInit | undefined): Headers => {
    const h = new Headers(header);
    const t = token();
    if (t) h.set("Authorization", `Bearer ${t}`);
    return h;
  };
  return {
    unary: (method, signal, timeoutMs, header, input, contextValues) =>
      transport.unary(method, signal, timeoutMs, auth(header), input, contextValues),
    stream: (method, signal, timeoutMs, header, input, contextValues) =>
      transport.stream(method, signal, timeoutMs, auth(header), input, contextValues),
  };
}

/**
 * One natter server: typed calls, authenticated as the device of [token] once logged in. The
 * transport decides how calls travel: `@natter/client/web` (the Connect gateway of the HTTP
 * listener, for browsers) or `@natter/client/node` (native gRPC over HTTP/2 to the gRPC port).
 * Data comes back as the generated `natter.v1` messages.
 */
export class NatterClient {
  token: string;
  user: User | undefined;
  deviceId = 0;
  readonly services: Services;

  constructor(
    readonly transport: Transport,
    options: { token?: string } = {},
  ) {
    this.token = options.token ?? "";
    const t = withToken(transport, () => this.token);
    this.services = {
      accounts: createClient(AccountService, t),
      contacts: createClient(ContactService, t),
      threads: createClient(ThreadService, t),
      groups: createClient(GroupService, t),
      presence: createClient(PresenceService, t),
      socket: createClient(SocketService, t),
      media: createClient(MediaService, t),
      safety: createClient(SafetyService, t),
      push: createClient(PushService, t),
    };
  }

  private async call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw NatterError.from(e);
    }
  }

  // -- accounts ------------------------------------------------------------------------------

  async register(username: string, password: string, displayName = "", phone = ""): Promise<User | undefined> {
    return (await this.call(() => this.services.accounts.register({ username, password, displayName, phone }))).user;
  }

  /** Logs in as a new device; its token then authenticates every call (save it to stay logged in). */
  async login(username: string, password: string, deviceName = "typescript"): Promise<{ user: User | undefined; deviceId: number; token: string }> {
    const res = await this.call(() => this.services.accounts.login({ username, password, deviceName }));
    this.token = res.token;
    this.user = res.user;
    this.deviceId = Number(res.deviceId);
    return { user: res.user, deviceId: this.deviceId, token: res.token };
  }

  async logout(): Promise<void> {
    await this.call(() => this.services.accounts.logout({}));
  }

  /** The caller's account and settings (display name, phone, last seen, privacy mode, admin). */
  async me(): Promise<GetMeResponse> {
    return this.call(() => this.services.accounts.getMe({}));
  }

  /** Changes settings and the profile (display name, about, picture); contacts and chat partners are told live (`profile` events). */
  async updateSettings(change: SettingsChange): Promise<void> {
    await this.call(() => this.services.accounts.updateSettings(change));
  }

  /** The account's devices, oldest first; `current` marks this one. */
  async devices(): Promise<Device[]> {
    return (await this.call(() => this.services.accounts.listDevices({}))).devices;
  }

  /** Logs out one device (its streams close; it must log in again). */
  async revokeDevice(deviceId: number): Promise<void> {
    await this.call(() => this.services.accounts.revokeDevice({ deviceId: BigInt(deviceId) }));
  }

  /** Logs out every other device of the account; returns how many. */
  async revokeOtherDevices(): Promise<number> {
    const res = await this.call(() => this.services.accounts.revokeOtherDevices({}));
    return res.revokedDeviceIds.length;
  }

  /** Sets a new password; the other devices are logged out unless `keepOtherDevices`. Returns those logged out. */
  async changePassword(currentPassword: string, newPassword: string, keepOtherDevices = false): Promise<number[]> {
    const res = await this.call(() => this.services.accounts.changePassword({ currentPassword, newPassword, keepOtherDevices }));
    return res.revokedDeviceIds.map(Number);
  }

  /** Deletes the account for good (messages stay in others' history as "Deleted account"). */
  async deleteAccount(password: string): Promise<void> {
    await this.call(() => this.services.accounts.deleteAccount({ password }));
  }

  // -- safety --------------------------------------------------------------------------------

  async block(username: string): Promise<User | undefined> {
    return (await this.call(() => this.services.safety.blockUser({ username }))).user;
  }

  async unblock(username: string): Promise<void> {
    await this.call(() => this.services.safety.unblockUser({ username }));
  }

  /** Everyone the caller blocked, all pages. */
  async blocked(): Promise<User[]> {
    const out: User[] = [];
    let pageToken = "";
    do {
      const res = await this.call(() => this.services.safety.listBlockedUsers({ pageSize: 1000, pageToken }));
      out.push(...res.users);
      pageToken = res.nextPageToken;
    } while (pageToken);
    return out;
  }

  /**
   * Reports a user, or messages of a thread (`threadId` and `seqs`: copied for the admins);
   * `block` blocks the user as well. Returns the report's id.
   */
  async report(
    report: { username?: string; threadId?: number; seqs?: number[]; reason: ReportReason; text?: string; block?: boolean },
  ): Promise<number> {
    const res = await this.call(() =>
      this.services.safety.createReport({
        username: report.username ?? "",
        threadId: BigInt(report.threadId ?? 0),
        seqs: (report.seqs ?? []).map(BigInt),
        reason: report.reason,
        text: report.text ?? "",
        block: report.block ?? false,
      }),
    );
    return Number(res.reportId);
  }

  // -- push notifications --------------------------------------------------------------------

  /** Whether the server sends Web Push, its VAPID public key (for `pushManager.subscribe`) and gateways. */
  async pushConfig(): Promise<GetPushConfigResponse> {
    return this.call(() => this.services.push.getPushConfig({}));
  }

  /** Registers this device's browser subscription (replacing any target it had). */
  async setWebPush(keys: WebPushKeys): Promise<PushTarget | undefined> {
    return (await this.call(() => this.services.push.setPushTarget({ target: { case: "webPush", value: keys } }))).target;
  }

  /** Registers a mobile push gateway's token for this device (docs/push.md). */
  async setPushGateway(gatewayUrl: string, appId: string, pushkey: string): Promise<PushTarget | undefined> {
    return (
      await this.call(() => this.services.push.setPushTarget({ target: { case: "gateway", value: { gatewayUrl, appId, pushkey } } }))
    ).target;
  }

  /** This device's push target, if it has one. */
  async pushTarget(): Promise<PushTarget | undefined> {
    return (await this.call(() => this.services.push.getPushTarget({}))).target;
  }

  /** No more push notifications to this device. */
  async deletePushTarget(): Promise<void> {
    await this.call(() => this.services.push.deletePushTarget({}));
  }

  // -- contacts ------------------------------------------------------------------------------

  async addContact(username: string, alias = ""): Promise<Contact | undefined> {
    return (await this.call(() => this.services.contacts.addContact({ username, alias }))).contact;
  }

  async removeContact(username: string): Promise<void> {
    await this.call(() => this.services.contacts.removeContact({ username }));
  }

  /** Every contact, all pages. */
  async contacts(): Promise<Contact[]> {
    const out: Contact[] = [];
    let pageToken = "";
    do {
      const res = await this.call(() => this.services.contacts.listContacts({ pageSize: 1000, pageToken }));
      out.push(...res.contacts);
      pageToken = res.nextPageToken;
    } while (pageToken);
    return out;
  }

  // -- threads -------------------------------------------------------------------------------

  /** Threads, latest first: all of them, or the first `limit`. */
  async threads(limit = 0): Promise<Thread[]> {
    const out: Thread[] = [];
    let pageToken = "";
    do {
      const pageSize = limit ? Math.min(limit, 500) : 500;
      const res = await this.call(() => this.services.threads.listThreads({ pageSize, pageToken }));
      out.push(...res.threads);
      pageToken = res.nextPageToken;
    } while (pageToken && (!limit || out.length < limit));
    return limit ? out.slice(0, limit) : out;
  }

  async thread(threadId: number) {
    return this.call(() => this.services.threads.getThread({ threadId: BigInt(threadId) }));
  }

  async directThread(username: string): Promise<Thread | undefined> {
    return (await this.call(() => this.services.threads.getDirectThread({ username }))).thread;
  }

  /** A page of a thread, oldest first: the newest by default, older with beforeSeq, newer with afterSeq + forward. */
  async history(
    threadId: number,
    page: { beforeSeq?: number; afterSeq?: number; limit?: number; forward?: boolean; folded?: boolean } = {},
  ): Promise<HistoryPage> {
    const res = await this.call(() =>
      this.services.threads.listMessages({
        threadId: BigInt(threadId),
        beforeSeq: BigInt(page.beforeSeq ?? 0),
        afterSeq: BigInt(page.afterSeq ?? 0),
        limit: page.limit ?? 50,
        forward: page.forward ?? false,
        folded: page.folded ?? false,
      }),
    );
    return { messages: res.messages, more: res.more };
  }

  /** No push notifications for a thread: for `seconds`, or until unmuted (0). Returns the thread. */
  async mute(threadId: number, seconds = 0): Promise<Thread | undefined> {
    const until =
      seconds > 0
        ? ({ case: "duration", value: { seconds: BigInt(Math.round(seconds)), nanos: 0 } } as const)
        : ({ case: "forever", value: true } as const);
    return (await this.call(() => this.services.threads.muteThread({ threadId: BigInt(threadId), until }))).thread;
  }

  async unmute(threadId: number): Promise<Thread | undefined> {
    return (await this.call(() => this.services.threads.unmuteThread({ threadId: BigInt(threadId) }))).thread;
  }

  /** Messages holding every word of the query (three letters or more), best first, a page at a time. */
  async search(query: string, options: { threadId?: number; pageSize?: number; pageToken?: string } = {}): Promise<{ messages: Message[]; nextPageToken: string }> {
    const res = await this.call(() =>
      this.services.threads.searchMessages({
        query,
        threadId: BigInt(options.threadId ?? 0),
        pageSize: options.pageSize ?? 20,
        pageToken: options.pageToken ?? "",
      }),
    );
    return { messages: res.messages, nextPageToken: res.nextPageToken };
  }

  /** Deletes messages for this user only (on all their devices): an entry of the user's own log. */
  async hideMessages(threadId: number, seqs: number[]): Promise<void> {
    await this.call(() => this.services.threads.hideMessages({ threadId: BigInt(threadId), seqs: seqs.map(BigInt) }));
  }

  /** The user's own change log after `afterSeq` (the stream replays it too, from Hello.user_log_seq). */
  async userChanges(afterSeq = 0, limit = 500): Promise<UserChange[]> {
    return (await this.call(() => this.services.threads.listUserChanges({ afterSeq: BigInt(afterSeq), limit }))).changes;
  }

  /** Signed download links of an attachment (for `<img src>`, `<a download>`), valid for about an hour. */
  async attachmentLinks(attachmentId: string): Promise<{ url: string; thumbnailUrl: string; expireMs: number }> {
    const res = await this.call(() => this.services.media.getAttachment({ attachmentId }));
    const e = res.expireTime;
    return { url: res.url, thumbnailUrl: res.thumbnailUrl, expireMs: e ? Number(e.seconds) * 1000 + Math.floor(e.nanos / 1e6) : 0 };
  }

  // -- groups --------------------------------------------------------------------------------

  async createGroup(title: string, members: string[]): Promise<Thread | undefined> {
    return (await this.call(() => this.services.groups.createGroup({ title, members }))).thread;
  }

  async renameGroup(threadId: number, title: string): Promise<Message | undefined> {
    return (await this.call(() => this.services.groups.renameGroup({ threadId: BigInt(threadId), title }))).message;
  }

  async addMembers(threadId: number, members: string[]): Promise<Message | undefined> {
    return (await this.call(() => this.services.groups.addMembers({ threadId: BigInt(threadId), members }))).message;
  }

  async removeMembers(threadId: number, members: string[]): Promise<Message | undefined> {
    return (await this.call(() => this.services.groups.removeMembers({ threadId: BigInt(threadId), members }))).message;
  }

  async setRole(threadId: number, members: string[], admin: boolean): Promise<Message | undefined> {
    const role = admin ? MemberRole.ADMIN : MemberRole.MEMBER;
    return (await this.call(() => this.services.groups.setMemberRole({ threadId: BigInt(threadId), members, role }))).message;
  }

  async leaveGroup(threadId: number): Promise<void> {
    await this.call(() => this.services.groups.leaveGroup({ threadId: BigInt(threadId) }));
  }

  // -- presence and routing ------------------------------------------------------------------

  async presence(usernames: string[]): Promise<Presence[]> {
    return (await this.call(() => this.services.presence.getPresence({ usernames }))).presences;
  }

  /** host:port of the socket server that holds this user's streams (cluster mode). */
  async locate(username: string): Promise<string> {
    return (await this.call(() => this.services.socket.locate({ username }))).address;
  }
}
