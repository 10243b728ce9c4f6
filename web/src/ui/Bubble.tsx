// One message in a chat: its bubble with sender, text, time and ticks; and a message still in the outbox.
import { memo } from "preact/compat";
import type { Msg, Pending, Tick } from "../model";
import { clock, systemText } from "./format";

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
}

/** A delivered message. Memoised: a bubble re-renders only when its own props change. */
export const Bubble = memo(function Bubble({ m, mine, group, tick }: BubbleProps) {
  if (m.system) {
    return (
      <li class="system" data-seq={m.seq} aria-posinset={m.seq} aria-setsize={-1}>
        {systemText(m)}
      </li>
    );
  }
  return (
    <li class={mine ? "bubble mine" : "bubble theirs"} data-seq={m.seq} data-testid="message" aria-posinset={m.seq} aria-setsize={-1}>
      {group && !mine ? <span class="sender">{m.sender.name}</span> : <span class="sr-only">{mine ? "You" : m.sender.name}: </span>}
      <span class="text">{m.text}</span>
      <span class="meta">
        <time dateTime={new Date(m.time).toISOString()}>{clock(m.time)}</time>
        {tick && <Ticks tick={tick} />}
      </span>
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
    <li class="bubble mine pending" data-testid="message" data-pending={p.clientMsgId}>
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
