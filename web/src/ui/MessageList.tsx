// A chat's scrolling history: keeps the newest in view, pages older messages in and holds the reader's place.
import { useCallback, useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { problem } from "../api";
import type { ThreadInfo } from "../model";
import type { Natter } from "../natter";
import { tickOf } from "../sync";
import { Bubble, PendingBubble } from "./Bubble";

export function MessageList({ n, t }: { n: Natter; t: ThreadInfo }) {
  const st = n.state!;
  const id = t.id;
  const list = st.messages[id] ?? [];
  const outbox = st.outbox.filter((p) => p.threadId === id);
  const members = n.members(id);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const [olderError, setOlderError] = useState("");
  const [loadingOlder, setLoadingOlder] = useState(false);
  const retry = useCallback((clientMsgId: string) => n.retrySend(clientMsgId), [n]);
  const discard = useCallback((clientMsgId: string) => n.discard(clientMsgId), [n]);

  useEffect(() => {
    stick.current = true;
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

  const more = st.olderMore[id] ?? (list[0]?.seq ?? 1) > 1;

  return (
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
          <PendingBubble key={p.clientMsgId} p={p} onRetry={retry} onDiscard={discard} />
        ))}
      </ol>
    </div>
  );
}
