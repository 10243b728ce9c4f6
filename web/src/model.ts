// The app's plain data: what is stored per device and rendered. Ids are numbers (they fit in 2^53).

export interface Person {
  id: number;
  username: string;
  name: string;
  /** The status line, where the server shows the profile (contacts, chat partners); absent otherwise. */
  about?: string;
  /** The profile picture's attachment id; absent when none (initials are shown). */
  picture?: string;
}

export type Tick = "pending" | "failed" | "sent" | "delivered" | "read";

export interface SystemInfo {
  kind: number; // natter.v1.SystemEventKind
  actor: Person;
  users: Person[];
  title: string;
}

/** A photo, file or voice note a message refers to (natter.v1.Attachment). */
export interface Att {
  id: string;
  mime: string;
  size: number;
  name: string;
  width: number;
  height: number;
  durationMs: number;
  blurhash: string;
  thumb: boolean;
  voice: boolean;
}

/** The quoted message of a reply, as it was when the reply was sent. */
export interface Quote {
  seq: number;
  sender: Person;
  snippet: string;
}

/** One member's current reaction; `seq` is the event's, so the newest wins whatever the order. */
export interface Reacted {
  person: Person;
  emoji: string;
  seq: number;
}

export interface Msg {
  threadId: number;
  seq: number;
  msgId: string;
  sender: Person;
  senderDevice: number;
  clientMsgId: string;
  system: SystemInfo | null;
  text: string;
  time: number; // ms since the epoch
  state: number; // natter.v1.MessageState as the server last said (own messages only)
  // Rich messages (absent in state saved by older builds: read with defaults).
  kind?: number; // natter.v1.MessageKind; a number this build has no name for is shown as unsupported
  attachments?: Att[];
  replyTo?: Quote | null;
  forwarded?: boolean;
  targetSeq?: number; // events: the message they change
  emoji?: string; // reaction events
  editSeq?: number; // folded: the seq of the edit that gave `text`; 0 never edited
  editTime?: number;
  deleted?: boolean;
  hidden?: boolean; // deleted for me
  reactions?: Record<number, Reacted>; // by user id
}

export interface ThreadInfo {
  id: number;
  group: boolean;
  title: string;
  peer: Person | null;
  lastSeq: number;
  readSeq: number;
  unread: number;
  last: Msg | null;
  updated: number; // ms
  admin: boolean;
  members: number;
  active: boolean;
  muted?: boolean; // no push notifications for it (on every device of the user)
  muteUntil?: number; // ms; 0 while muted for good
}

export interface MemberInfo {
  person: Person;
  admin: boolean;
  delivered: number;
  read: number;
}

export interface Pending {
  clientMsgId: string;
  threadId: number;
  text: string;
  time: number;
  failed: string; // why the server refused it; empty while it waits
  attachments?: Att[]; // uploaded, sent by id
  replyToSeq?: number;
  /** A change to a sent message or a forward: not shown as a bubble of its own. */
  change?: { react?: { seq: number; emoji: string }; edit?: { seq: number }; delete?: { seq: number }; forward?: { threadId: number; seq: number } };
}

export interface ContactInfo {
  person: Person;
  alias: string;
}

export interface PresenceInfo {
  online: boolean;
  lastSeen: number; // ms, 0 when hidden or never
}

/** Everything one device (one browser tab) keeps, persisted so it opens offline. */
export interface DeviceState {
  version: 1;
  deviceId: number;
  token: string;
  me: Person;
  deviceName: string;
  expired: boolean;
  cursors: Record<number, number>;
  threads: Record<number, ThreadInfo>;
  messages: Record<number, Msg[]>;
  olderMore: Record<number, boolean>;
  members: Record<number, MemberInfo[]>;
  outbox: Pending[];
  contacts: ContactInfo[];
  presence: Record<number, PresenceInfo>;
  /** The last entry of the user's own change log (delete for me) this device has. */
  userLogSeq?: number;
  /** Events whose message is not loaded here yet, by thread: folded when it arrives. */
  orphans?: Record<number, Msg[]>;
  /** Messages hidden for me whose message is not loaded here yet: "thread:seq". */
  hiddenKeys?: string[];
}

export function newDevice(deviceId: number, token: string, me: Person, deviceName: string): DeviceState {
  return {
    version: 1,
    deviceId,
    token,
    me,
    deviceName,
    expired: false,
    cursors: {},
    threads: {},
    messages: {},
    olderMore: {},
    members: {},
    outbox: [],
    contacts: [],
    presence: {},
  };
}
