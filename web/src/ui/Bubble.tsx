// One message in a chat: its bubble with sender, text, time and ticks; and a message still in the outbox.
import { memo } from "preact/compat";
import { useRef, useState } from "preact/hooks";
import type { Msg, Pending, Tick } from "../model";
import { clock, systemText } from "./format";
import { MessageActions, type ActionPorts } from "./MessageActions";
import { RichContent, size, type RichPorts } from "./Rich";

const TICK_WORDS: Record<Tick, string> = {
  pending: "waiting to send",
  failed: "not sent",
  sent: "sent",
  delivered: "delivered",
  read: "read",
};

const CHECK = "M1.5 6.2 4.6 9.3 10.5 1.8";
const SECOND = "M7.4 8.1 8.6 9.3 14.5 1.8";

/** The familiar marks, drawn (a glyph's weight and size vary by font): one tick, two, two blue. */
function TickMark({ tick }: { tick: Tick }) {
  if (tick === "failed") return <span class="tick-glyph">!</span>;
  if (tick === "pending") {
    return (
      <svg viewBox="0 0 16 11" width="16" height="11" aria-hidden="true" focusable="false">
        <circle cx="8" cy="5.5" r="4.2" />
        <path d="M8 3.2V5.7L9.6 6.8" />
      </svg>
    );
  }
  return (
    <svg viewBox="0 0 16 11" width="16" height="11" aria-hidden="true" focusable="false">
      <path d={CHECK} />
      {tick !== "sent" && <path d={SECOND} />}
    </svg>
  );
}

export function Ticks({ tick }: { tick: Tick }) {
  const words = TICK_WORDS[tick];
  return (
    <span class={`tick ${tick}`} data-tick={tick} title={words}>
      <span aria-hidden="true">
        <TickMark tick={tick} />
      </span>
      <span class="sr-only">{words}</span>
    </span>
  );
}

export interface BubbleProps {
  m: Msg;
  mine: boolean;
  /** In a group chat, other people's bubbles name their sender. */
  group: boolean;
  /** Own messages only; null for others' and for system lines. */
  tick: Tick | null;
  /** The first of consecutive messages from one sender: it names them (in groups). */
  first?: boolean;
  /** The reader may delete anyone's message (a group admin). */
  admin?: boolean;
  /** What the content and the actions call: stable across renders, so memoisation holds. */
  ports?: RichPorts & ActionPorts;
}

/** A delivered message. Memoised: a bubble re-renders only when its own props change. */
export const Bubble = memo(function Bubble({ m, mine, group, tick, first = true, admin = false, ports }: BubbleProps) {
  const touch = useRef<{ x: number; y: number; at: number } | null>(null);
  const [shift, setShift] = useState(0);
  const [held, setHeld] = useState(false);
  if (m.system) {
    return (
      <li class="system" data-seq={m.seq} aria-posinset={m.seq} aria-setsize={-1}>
        {systemText(m)}
      </li>
    );
  }
  if (m.hidden) return null;
  const cls = `bubble ${mine ? "mine" : "theirs"}${first ? " first" : " cont"}${held ? " show-actions" : ""}`;
  return (
    <li
      class={cls}
      data-seq={m.seq}
      data-testid="message"
      aria-posinset={m.seq}
      aria-setsize={-1}
      dir="auto"
      style={shift ? { transform: `translateX(${shift}px)` } : undefined}
      onTouchStart={(e) => {
        const t = e.touches[0];
        touch.current = { x: t.clientX, y: t.clientY, at: Date.now() };
      }}
      onTouchMove={(e) => {
        const s = touch.current;
        if (!s) return;
        const dx = e.touches[0].clientX - s.x;
        if (Math.abs(e.touches[0].clientY - s.y) > 30) touch.current = null;
        else setShift(Math.max(0, Math.min(80, dx)));
      }}
      onTouchEnd={() => {
        const s = touch.current;
        touch.current = null;
        // Swipe right to reply; a long press shows the actions.
        if (shift > 60 && ports && !m.deleted) ports.reply(m);
        else if (s && shift < 8 && Date.now() - s.at > 500) setHeld(!held);
        setShift(0);
      }}
    >
      {group && !mine && first ? <span class="sender">{m.sender.name}</span> : <span class="sr-only">{mine ? "You" : m.sender.name}: </span>}
      {ports ? <RichContent m={m} ports={ports} /> : <span class="text">{m.text}</span>}
      <span class="meta">
        <time dateTime={new Date(m.time).toISOString()}>{clock(m.time)}</time>
        {tick && <Ticks tick={tick} />}
      </span>
      {ports && <MessageActions m={m} mine={mine} admin={admin} ports={ports} />}
    </li>
  );
});

export interface PendingBubbleProps {
  p: Pending;
  onRetry: (clientMsgId: string) => void;
  onDiscard: (clientMsgId: string) => void;
}

/** A message in the outbox: waiting to send, or refused with Retry and Delete. */
export const PendingBubble = memo(function PendingBubble({ p, onRetry, onDiscard }: PendingBubbleProps) {
  return (
    <li class="bubble mine pending" data-testid="message" data-pending={p.clientMsgId} dir="auto">
      {p.attachments?.map((a) => (
        <span class="file" key={a.id}>
          <span aria-hidden="true">📎</span> {a.name} ({size(a.size)})
        </span>
      ))}
      <span class="sr-only">You: </span>
      <span class="text">{p.text}</span>
      <span class="meta">
        <time dateTime={new Date(p.time).toISOString()}>{clock(p.time)}</time>
        <Ticks tick={p.failed ? "failed" : "pending"} />
      </span>
      {p.failed && (
        <span class="failed">
          {p.failed}{" "}
          <button type="button" class="link" onClick={() => onRetry(p.clientMsgId)}>
            Retry
          </button>{" "}
          <button type="button" class="link" onClick={() => onDiscard(p.clientMsgId)}>
            Delete
          </button>
        </span>
      )}
    </li>
  );
});
