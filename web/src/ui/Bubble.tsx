// One message in a chat: its bubble with sender, text, time and ticks; and a message still in the outbox.
import { memo } from "preact/compat";
import type { Msg, Pending, Tick } from "../model";
import { clock, systemText } from "./format";

const TICK_TEXT: Record<Tick, [string, string]> = {
  pending: ["○", "waiting to send"],
  failed: ["!", "not sent"],
  sent: ["✓", "sent"],
  delivered: ["✓✓", "delivered"],
  read: ["✓✓", "read"],
};

export function Ticks({ tick }: { tick: Tick }) {
  const [glyph, words] = TICK_TEXT[tick];
  return (
    <span class={`tick ${tick}`} data-tick={tick} title={words}>
      <span aria-hidden="true">{glyph}</span>
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
      <li class="system" data-seq={m.seq}>
        {systemText(m)}
      </li>
    );
  }
  return (
    <li class={mine ? "bubble mine" : "bubble theirs"} data-seq={m.seq} data-testid="message">
      {group && !mine && <span class="sender">{m.sender.name}</span>}
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
