// The thread list: newest first, with preview, time, unread count and the peer's online dot; each item reads as one line.
import { useState } from "preact/hooks";
import type { Natter } from "../natter";
import { orderThreads } from "../sync";
import { initials, preview, when } from "./format";
import { go } from "./hooks";

export function Avatar({ name, online }: { name: string; online?: boolean | undefined }) {
  return (
    <span class="avatar" aria-hidden="true">
      {initials(name)}
      {online !== undefined && <span class={online ? "dot online" : "dot"} />}
    </span>
  );
}

const PAGE = 60;

export function Threads({ n, selected }: { n: Natter; selected: number }) {
  const st = n.state!;
  const all = orderThreads(Object.values(st.threads).filter((t) => t.active || t.last));
  // Long lists render the first rows and grow as the reader scrolls down.
  const [limit, setLimit] = useState(PAGE);
  const threads = all.slice(0, Math.max(limit, all.findIndex((t) => t.id === selected) + 1));
  return (
    <nav
      class="threads"
      aria-label="Chats"
      onScroll={(e) => {
        const el = e.currentTarget;
        if (threads.length < all.length && el.scrollHeight - el.scrollTop - el.clientHeight < 400) setLimit(threads.length + PAGE);
      }}
    >
      {threads.length === 0 ? (
        <p class="empty">
          No chats yet. <a href="#/contacts">Add a contact</a> to start one.
        </p>
      ) : (
        <ul>
          {threads.map((t) => {
            const p = t.peer ? st.presence[t.peer.id] : undefined;
            const pending = st.outbox.filter((x) => x.threadId === t.id).length;
            const typing = n.typing[t.id];
            return (
              <li key={t.id}>
                <a
                  class={t.id === selected ? "thread selected" : "thread"}
                  href={`#/chat/${t.id}`}
                  aria-current={t.id === selected ? "page" : undefined}
                  data-thread={t.id}
                  onClick={() => go(`/chat/${t.id}`)}
                >
                  <Avatar name={t.title} online={t.group ? undefined : Boolean(p?.online)} />
                  <span class="thread-main">
                    <span class="thread-top">
                      <span class="thread-title">
                        {t.title}
                        {p?.online && <span class="sr-only">, online</span>}
                        <span class="sr-only">, </span>
                      </span>
                      <span class="thread-time">
                        {when(t.last?.time ?? t.updated)}
                        <span class="sr-only">, </span>
                      </span>
                    </span>
                    <span class="thread-bottom">
                      <span class="thread-preview">
                        {typing ? <em>{typing.name} is typing…</em> : pending ? `${pending} waiting to send` : preview(t.last, st.me.id, t.group)}
                      </span>
                      {t.unread > 0 && (
                        <span class="badge" data-unread={t.unread}>
                          <span class="sr-only">, </span>
                          {t.unread}
                          <span class="sr-only"> unread</span>
                        </span>
                      )}
                    </span>
                  </span>
                </a>
              </li>
            );
          })}
        </ul>
      )}
    </nav>
  );
}
