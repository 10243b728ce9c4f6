// Folding a thread's log into what people see: edits, deletes and reactions onto messages.
//
// The port of natter/sdk/fold.py. Every entry of a thread's log reaches a device once, in
// order, but history pages and replays can bring a message after the events that changed it,
// or a message the server already folded (ListMessages, sync) together with those events. So
// the fold does not depend on arrival order: each change carries the seq of the event that
// made it and the newest wins — the edit with the highest seq, one reaction per member (the
// one with the highest seq; an empty emoji removes it), a delete for good. Feeding the same
// entry twice, or in any order, gives the same view.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { MessageKind, UserChangeKind, type Attachment, type Message, type User, type UserChange } from "./gen/natter/v1/types_pb.js";

/** The kinds that change another message rather than stand on their own. */
export function isEvent(kind: MessageKind): boolean {
  return kind === MessageKind.REACTION || kind === MessageKind.EDIT || kind === MessageKind.DELETE;
}

/** Kinds this SDK knows how to show; anything else is "unsupported message — update the app". */
export function isKnownKind(kind: MessageKind): boolean {
  return kind >= MessageKind.TEXT && kind <= MessageKind.DELETE;
}

/** A message as it stands now, for display. */
export interface View {
  message: Message;
  threadId: number;
  seq: number;
  kind: MessageKind;
  text: string;
  attachments: Attachment[];
  edited: boolean;
  editTime: Timestamp | undefined;
  deleted: boolean;
  hidden: boolean;
  /** Each member's current reaction, by user id. */
  reactions: Map<number, { user: User | undefined; emoji: string }>;
  /** How many members reacted with each emoji, most first. */
  counts: [string, number][];
}

interface Entry {
  base: Message | undefined;
  text: { seq: number; text: string; time: Timestamp | undefined } | undefined;
  deleted: boolean;
  reactions: Map<number, { seq: number; user: User | undefined; emoji: string }>;
  hidden: boolean;
}

/** The key of a message in a fold: `"thread:seq"`. */
export function foldKey(threadId: number | bigint, seq: number | bigint): string {
  return `${Number(threadId)}:${Number(seq)}`;
}

/** The folded state of every thread a device has seen; feed it every entry it gets. */
export class Fold {
  private readonly entries = new Map<string, Entry>();

  private entry(threadId: number, seq: number): Entry {
    const key = foldKey(threadId, seq);
    let e = this.entries.get(key);
    if (!e) this.entries.set(key, (e = { base: undefined, text: undefined, deleted: false, reactions: new Map(), hidden: false }));
    return e;
  }

  /** Takes one entry of a log; returns the `[thread, seq]` of the message whose view it changed. */
  apply(m: Message): [number, number] {
    const threadId = Number(m.threadId);
    if (isEvent(m.kind)) {
      const target = Number(m.targetSeq);
      const e = this.entry(threadId, target);
      const seq = Number(m.seq);
      if (m.kind === MessageKind.EDIT) {
        if (!e.text || seq > e.text.seq) e.text = { seq, text: m.text, time: m.createTime };
      } else if (m.kind === MessageKind.DELETE) {
        e.deleted = true;
      } else {
        react(e, m.sender, m.emoji, seq);
      }
      return [threadId, target];
    }
    const seq = Number(m.seq);
    const e = this.entry(threadId, seq);
    if (!e.base || fresher(m, e.base)) e.base = m;
    const editSeq = Number(m.editSeq);
    if (editSeq && (!e.text || editSeq > e.text.seq)) e.text = { seq: editSeq, text: m.text, time: m.editTime };
    e.deleted ||= m.deleted;
    e.hidden ||= m.hidden;
    for (const r of m.reactions) react(e, r.user, r.emoji, Number(r.seq));
    return [threadId, seq];
  }

  /** Takes an entry of the user's own log (delete for me); returns the message it hid. */
  change(c: UserChange): [number, number] | null {
    if (c.kind !== UserChangeKind.HIDE_MESSAGE || !c.message) return null;
    const threadId = Number(c.message.threadId);
    const seq = Number(c.message.seq);
    this.entry(threadId, seq).hidden = true;
    return [threadId, seq];
  }

  /** A message as it stands now; undefined until the message itself has arrived. */
  view(threadId: number, seq: number): View | undefined {
    const e = this.entries.get(foldKey(threadId, seq));
    if (!e?.base) return undefined;
    const base = e.base;
    let text = base.text;
    let editTime = base.editTime;
    if (e.text && e.text.seq >= Number(base.editSeq)) {
      text = e.text.text;
      editTime = e.text.time;
    }
    const edited = !!e.text || Number(base.editSeq) > 0;
    const common = { message: base, threadId, seq, kind: base.kind, edited, editTime };
    if (e.deleted || e.hidden) {
      return { ...common, text: "", attachments: [], deleted: e.deleted, hidden: e.hidden, reactions: new Map(), counts: [] };
    }
    const reactions = new Map<number, { user: User | undefined; emoji: string }>();
    for (const [uid, r] of e.reactions) if (r.emoji) reactions.set(uid, { user: r.user, emoji: r.emoji });
    return { ...common, text, attachments: base.attachments, deleted: false, hidden: false, reactions, counts: counts(reactions) };
  }

  /** The thread's messages as they stand, in seq order (hidden ones left out). */
  thread(threadId: number): View[] {
    const out: View[] = [];
    for (const [key, e] of this.entries) {
      if (!e.base || Number(e.base.threadId) !== threadId) continue;
      const seq = Number(key.slice(key.indexOf(":") + 1));
      const v = this.view(threadId, seq);
      if (v && !v.hidden) out.push(v);
    }
    return out.sort((a, b) => a.seq - b.seq);
  }
}

function react(e: Entry, user: User | undefined, emoji: string, seq: number): void {
  const uid = Number(user?.userId ?? 0);
  const have = e.reactions.get(uid);
  if (!have || seq > have.seq) e.reactions.set(uid, { seq, user, emoji });
}

function counts(reactions: Map<number, { emoji: string }>): [string, number][] {
  const n = new Map<string, number>();
  for (const { emoji } of reactions.values()) n.set(emoji, (n.get(emoji) ?? 0) + 1);
  return [...n.entries()].sort((a, b) => b[1] - a[1]);
}

/** Of two copies of one message, the one folded later (or the newer one on a tie). */
function fresher(m: Message, old: Message): boolean {
  const a = [Number(m.editSeq), Number(m.deleteSeq), m.reactions.length];
  const b = [Number(old.editSeq), Number(old.deleteSeq), old.reactions.length];
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] > b[i];
  return true;
}
