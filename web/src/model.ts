// The app's plain data: what is stored per device and rendered. Ids are numbers (they fit in 2^53).

export interface Person {
  id: number;
  username: string;
  name: string;
}

export type Tick = "pending" | "failed" | "sent" | "delivered" | "read";

export interface SystemInfo {
  kind: number; // natter.v1.SystemEventKind
  actor: Person;
  users: Person[];
  title: string;
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
