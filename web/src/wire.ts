// The one place generated protobuf types meet the app's plain data.
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Attachment, Member, Message, Presence, Thread, User } from "@natter/client/v1";
import { MemberRole, MessageKind, ThreadKind } from "@natter/client/v1";
import type { Att, MemberInfo, Msg, Person, PresenceInfo, Reacted, ThreadInfo } from "./model";

export function ms(ts: Timestamp | undefined): number {
  return ts ? timestampMs(ts) : 0;
}

export function person(u: User | undefined): Person {
  if (!u) return { id: 0, username: "", name: "" };
  const p: Person = { id: Number(u.userId), username: u.username, name: u.displayName || u.username };
  if (u.about) p.about = u.about;
  if (u.pictureId) p.picture = u.pictureId;
  return p;
}

export function msg(m: Message): Msg {
  return {
    threadId: Number(m.threadId),
    seq: Number(m.seq),
    msgId: m.msgId,
    sender: person(m.sender),
    senderDevice: Number(m.senderDeviceId),
    clientMsgId: m.clientMsgId,
    system:
      m.kind === MessageKind.SYSTEM && m.system
        ? {
            kind: m.system.kind,
            actor: person(m.system.actor),
            users: m.system.users.map(person),
            title: m.system.title,
          }
        : null,
    text: m.text,
    time: ms(m.createTime),
    state: m.state,
    kind: m.kind,
    attachments: m.attachments.map(attachment),
    replyTo: m.replyTo ? { seq: Number(m.replyTo.seq), sender: person(m.replyTo.sender), snippet: m.replyTo.snippet } : null,
    forwarded: m.forwarded,
    targetSeq: Number(m.targetSeq),
    emoji: m.emoji,
    editSeq: Number(m.editSeq),
    editTime: ms(m.editTime),
    deleted: m.deleted,
    hidden: m.hidden,
    reactions: Object.fromEntries(
      m.reactions.map((r): [number, Reacted] => [Number(r.user?.userId ?? 0), { person: person(r.user), emoji: r.emoji, seq: Number(r.seq) }]),
    ),
  };
}

export function attachment(a: Attachment): Att {
  return {
    id: a.attachmentId,
    mime: a.mimeType,
    size: Number(a.size),
    name: a.name,
    width: a.width,
    height: a.height,
    durationMs: Number(a.durationMs),
    blurhash: a.blurhash,
    thumb: a.hasThumbnail,
    voice: a.voiceNote,
  };
}

export function thread(t: Thread): ThreadInfo {
  const peer = t.peer ? person(t.peer) : null;
  return {
    id: Number(t.threadId),
    group: t.kind === ThreadKind.GROUP,
    title: t.title || peer?.name || "(no title)",
    peer,
    lastSeq: Number(t.lastSeq),
    readSeq: Number(t.readSeq),
    unread: Number(t.unreadCount),
    last: t.lastMessage ? msg(t.lastMessage) : null,
    updated: ms(t.updateTime),
    admin: t.role === MemberRole.ADMIN,
    members: t.memberCount,
    active: t.active,
    muted: t.muted,
    muteUntil: ms(t.muteEndTime),
  };
}

export function member(m: Member): MemberInfo {
  return {
    person: person(m.user),
    admin: m.role === MemberRole.ADMIN,
    delivered: Number(m.deliveredSeq),
    read: Number(m.readSeq),
  };
}

export function presence(p: Presence): [number, PresenceInfo] {
  return [Number(p.user?.userId ?? 0), { online: p.online, lastSeen: ms(p.lastSeenTime) }];
}
