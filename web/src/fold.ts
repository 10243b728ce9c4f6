// Folding a thread's events onto the app's stored messages: the rules of @natter/client's Fold
// (natter/sdk/fold.py) over the plain data the app saves. Each change carries the seq of the event
// that made it and the newest wins, so the order things arrive in does not matter.
import type { Msg } from "./model";

/** natter.v1.MessageKind values this build knows. */
export const KIND = { TEXT: 1, SYSTEM: 2, ATTACHMENT: 3, REACTION: 4, EDIT: 5, DELETE: 6 } as const;

export function kindOf(m: Msg): number {
  return m.kind ?? (m.system ? KIND.SYSTEM : KIND.TEXT);
}

/** Reactions, edits and deletes: entries of the log that change another message. */
export function isEvent(m: Msg): boolean {
  const k = kindOf(m);
  return k === KIND.REACTION || k === KIND.EDIT || k === KIND.DELETE;
}

/** A kind this build can show; any other is "unsupported message — update the app". */
export function isKnown(m: Msg): boolean {
  const k = kindOf(m);
  return k >= KIND.TEXT && k <= KIND.DELETE;
}

/** Folds one event onto its target message; returns the changed copy. */
export function applyEvent(target: Msg, ev: Msg): Msg {
  const k = kindOf(ev);
  if (k === KIND.EDIT) {
    if (target.deleted || ev.seq <= (target.editSeq ?? 0)) return target;
    return { ...target, text: ev.text, editSeq: ev.seq, editTime: ev.time };
  }
  if (k === KIND.DELETE) {
    if (target.deleted) return target;
    return { ...target, deleted: true, text: "", attachments: [], reactions: {} };
  }
  if (k === KIND.REACTION) {
    if (target.deleted) return target;
    const have = target.reactions?.[ev.sender.id];
    if (have && have.seq >= ev.seq) return target;
    return { ...target, reactions: { ...(target.reactions ?? {}), [ev.sender.id]: { person: ev.sender, emoji: ev.emoji ?? "", seq: ev.seq } } };
  }
  return target;
}

/**
 * Two copies of one message (say, stored and then a history page folded by the server): the
 * newest text, a delete for good, each member's newest reaction; hidden stays hidden.
 */
export function mergeCopies(old: Msg, fresh: Msg): Msg {
  const out: Msg = { ...fresh, state: Math.max(old.state, fresh.state) };
  if ((old.editSeq ?? 0) > (fresh.editSeq ?? 0)) {
    out.text = old.text;
    out.editSeq = old.editSeq;
    out.editTime = old.editTime;
  }
  out.hidden = !!(old.hidden || fresh.hidden);
  if (old.deleted || fresh.deleted) return { ...out, deleted: true, text: "", attachments: [], reactions: {} };
  const reactions = { ...(fresh.reactions ?? {}) };
  for (const [uid, r] of Object.entries(old.reactions ?? {})) {
    const f = reactions[Number(uid)];
    if (!f || r.seq > f.seq) reactions[Number(uid)] = r;
  }
  out.reactions = reactions;
  return out;
}

/** Counts per emoji, most first (removed reactions, with an empty emoji, left out). */
export function reactionCounts(m: Msg): { emoji: string; count: number; names: string[] }[] {
  const by = new Map<string, string[]>();
  for (const r of Object.values(m.reactions ?? {})) {
    if (!r.emoji) continue;
    by.set(r.emoji, [...(by.get(r.emoji) ?? []), r.person.name]);
  }
  return [...by.entries()].map(([emoji, names]) => ({ emoji, count: names.length, names })).sort((a, b) => b.count - a.count);
}

export function edited(m: Msg): boolean {
  return (m.editSeq ?? 0) > 0;
}
