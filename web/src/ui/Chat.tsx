// One conversation: bubbles with time and ticks, typing indicator, scroll-back, and the composer.
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { problem } from "../api";
import type { Msg, Pending, Tick } from "../model";
import type { Natter } from "../natter";
import { MAX_TEXT_BYTES, textProblem, tickOf } from "../sync";
import { clock, lastSeen, systemText } from "./format";
import { go } from "./hooks";
import { ChatMenu } from "./Menus";

const TICK_TEXT: Record<Tick, [string, string]> = {
  pending: ["○", "waiting to send"],
  failed: ["!", "not sent"],
  sent: ["✓", "sent"],
  delivered: ["✓✓", "delivered"],
  read: ["✓✓", "read"],
};

function Ticks({ tick }: { tick: Tick }) {
  const [glyph, words] = TICK_TEXT[tick];
  return (
    <span class={`tick ${tick}`} data-tick={tick} title={words}>
      <span aria-hidden="true">{glyph}</span>
      <span class="sr-only">{words}</span>
    </span>
  );
}

function Bubble({ m, mine, group, tick }: { m: Msg; mine: boolean; group: boolean; tick: Tick | null }) {
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
}

function PendingBubble({ p, n }: { p: Pending; n: Natter }) {
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
          <button type="button" class="link" onClick={() => n.retrySend(p.clientMsgId)}>
            Retry
          </button>{" "}
          <button type="button" class="link" onClick={() => n.discard(p.clientMsgId)}>
            Delete
          </button>
        </span>
      )}
    </li>
  );
}

function Composer({ n, threadId, disabled }: { n: Natter; threadId: number; disabled: boolean }) {
  const [text, setText] = useState("");
  const [error, setError] = useState("");
  const box = useRef<HTMLTextAreaElement>(null);
  const size = new TextEncoder().encode(text).length;
  const tooBig = size > MAX_TEXT_BYTES;

  useEffect(() => {
    setText("");
    setError("");
  }, [threadId]);

  function submit(e?: Event) {
    e?.preventDefault();
    const why = n.send(threadId, text);
    if (why) {
      setError(why);
      return;
    }
    setText("");
    setError("");
    box.current?.focus();
  }

  return (
    <form class="composer" onSubmit={submit}>
      <label for="composer-text" class="sr-only">
        Message
      </label>
      <textarea
        id="composer-text"
        ref={box}
        rows={1}
        placeholder={disabled ? "You can no longer send here" : "Message"}
        disabled={disabled}
        value={text}
        aria-invalid={tooBig}
        aria-describedby={error || tooBig ? "composer-error" : undefined}
        onInput={(e) => {
          setText(e.currentTarget.value);
          setError("");
          n.typingInput(threadId, e.currentTarget.value);
        }}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            submit();
          }
        }}
      />
      <button class="primary send" type="submit" disabled={disabled || tooBig || text.trim() === ""}>
        Send
      </button>
      {(error || tooBig) && (
        <p id="composer-error" class="error" role="alert">
          {error || textProblem(text)}
        </p>
      )}
    </form>
  );
}

export function Chat({ n, id, narrow }: { n: Natter; id: number; narrow: boolean }) {
  const st = n.state!;
  const t = st.threads[id];
  const list = n.shown(id, st.messages[id] ?? []);
  const outbox = st.outbox.filter((p) => p.threadId === id);
  const members = n.members(id);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const [olderError, setOlderError] = useState("");
  const [loadingOlder, setLoadingOlder] = useState(false);

  useEffect(() => {
    n.openChat(id);
    stick.current = true;
    return () => n.closeChat();
  }, [id]);

  // Keep the newest message in view unless the reader has scrolled up.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  });

  async function older() {
    const el = scroller.current;
    const before = el ? el.scrollHeight - el.scrollTop : 0;
    setLoadingOlder(true);
    try {
      await n.loadOlder(id);
      setOlderError("");
    } catch (e) {
      setOlderError(problem(e));
    } finally {
      setLoadingOlder(false);
    }
    if (el) el.scrollTop = el.scrollHeight - before;
  }

  if (!t) {
    return (
      <section class="chat empty-chat">
        <p>This chat is not on this device yet.</p>
      </section>
    );
  }
  const peerPresence = t.peer ? st.presence[t.peer.id] : undefined;
  const typing = n.typing[id];
  const subtitle = typing
    ? `${typing.name} is typing…`
    : t.group
      ? `${members?.length ?? t.members} members`
      : lastSeen(peerPresence);
  const more = st.olderMore[id] ?? (list[0]?.seq ?? 1) > 1;

  return (
    <section class="chat" aria-labelledby="chat-title">
      <header class="chat-head">
        {narrow && (
          <button type="button" class="icon" aria-label="Back to chats" onClick={() => go("/")}>
            ←
          </button>
        )}
        <div class="chat-title">
          <h2 id="chat-title">{t.title}</h2>
          <p class="subtitle" aria-live="polite">
            {subtitle}
          </p>
        </div>
        {t.group && (
          <a class="button secondary" href={`#/chat/${id}/info`} aria-label="Group info">
            Info
          </a>
        )}
        <ChatMenu n={n} id={id} />
      </header>
      <div
        class="messages"
        ref={scroller}
        onScroll={(e) => {
          const el = e.currentTarget;
          stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
          if (el.scrollTop < 10 && more && !loadingOlder && list.length) void older();
        }}
      >
        {more && list.length > 0 && (
          <p class="older">
            <button type="button" class="link" onClick={older} disabled={loadingOlder}>
              {loadingOlder ? "Loading…" : "Load older messages"}
            </button>
            {olderError && <span class="error"> {olderError}</span>}
          </p>
        )}
        <ol class="message-list" role="log" aria-label={`Messages with ${t.title}`} aria-live="polite" aria-relevant="additions">
          {list.map((m) => {
            const mine = m.sender.id === st.me.id;
            return <Bubble key={m.seq} m={m} mine={mine} group={t.group} tick={mine && !m.system ? tickOf(m, st.me.id, members) : null} />;
          })}
          {outbox.map((p) => (
            <PendingBubble key={p.clientMsgId} p={p} n={n} />
          ))}
        </ol>
      </div>
      <Composer n={n} threadId={id} disabled={!t.active} />
    </section>
  );
}
