// Small text helpers for the views: times, initials, system messages.
import type { Msg, PresenceInfo } from "../model";

export function clock(ms: number): string {
  if (!ms) return "";
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function when(ms: number): string {
  if (!ms) return "";
  const d = new Date(ms);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return clock(ms);
  const days = (now.getTime() - ms) / 86_400_000;
  if (days < 6) return d.toLocaleDateString([], { weekday: "short" });
  return d.toLocaleDateString([], { day: "numeric", month: "short" });
}

export function lastSeen(p: PresenceInfo | undefined): string {
  if (!p) return "";
  if (p.online) return "online";
  if (!p.lastSeen) return "offline";
  return `last seen ${when(p.lastSeen)}${new Date(p.lastSeen).toDateString() === new Date().toDateString() ? "" : ` ${clock(p.lastSeen)}`}`;
}

export function initials(name: string): string {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[1][0] : (parts[0] ?? "?").slice(0, 2);
  return letters.toUpperCase();
}

const KINDS: Record<number, (m: Msg) => string> = {
  1: (m) => `${m.system!.actor.name} created the group “${m.system!.title}”`,
  2: (m) => `${m.system!.actor.name} added ${names(m)}`,
  3: (m) => `${m.system!.actor.name} removed ${names(m)}`,
  4: (m) => `${m.system!.actor.name} left`,
  5: (m) => `${m.system!.actor.name} renamed the group to “${m.system!.title}”`,
  6: (m) => `${m.system!.actor.name} made ${names(m)} admin`,
  7: (m) => `${m.system!.actor.name} removed admin from ${names(m)}`,
};

function names(m: Msg): string {
  return m.system!.users.map((u) => u.name).join(", ");
}

export function systemText(m: Msg): string {
  if (!m.system) return m.text;
  return (KINDS[m.system.kind] ?? (() => "the group changed"))(m);
}

export function preview(m: Msg | null, meId: number, group = false): string {
  if (!m) return "";
  if (m.system) return systemText(m);
  const who = m.sender.id === meId ? "You: " : group ? `${m.sender.name}: ` : "";
  return who + m.text.replace(/\s+/g, " ").slice(0, 120);
}

/** A date separator's words: "Today", "Yesterday", a weekday within the week, else the date. */
export function dayLabel(ms: number, now = Date.now()): string {
  const d = new Date(ms);
  const today = new Date(now);
  today.setHours(0, 0, 0, 0);
  const start = new Date(ms);
  start.setHours(0, 0, 0, 0);
  const days = Math.round((today.getTime() - start.getTime()) / 86_400_000);
  if (days === 0) return "Today";
  if (days === 1) return "Yesterday";
  if (days > 1 && days < 7) return d.toLocaleDateString([], { weekday: "long" });
  const sameYear = d.getFullYear() === today.getFullYear();
  return d.toLocaleDateString([], { day: "numeric", month: "long", ...(sameYear ? {} : { year: "numeric" }) });
}

/** Whether two times fall on the same local day. */
export function sameDay(a: number, b: number): boolean {
  return new Date(a).toDateString() === new Date(b).toDateString();
}
