// The thread list: newest first, with preview, time, unread count and the peer's online dot.
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

export function Threads({ n, selected }: { n: Natter; selected: number }) {
  const st = n.state!;
  const threads = orderThreads(Object.values(st.threads).filter((t) => t.active || t.last));
  return (
    <nav class="threads" aria-label="Chats">
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
            const label = `${t.title}${p?.online ? ", online" : ""}${t.unread ? `, ${t.unread} unread` : ""}`;
            return (
              <li key={t.id}>
                <a
                  class={t.id === selected ? "thread selected" : "thread"}
                  href={`#/chat/${t.id}`}
                  aria-current={t.id === selected ? "page" : undefined}
                  aria-label={label}
                  data-thread={t.id}
                  onClick={() => go(`/chat/${t.id}`)}
                >
                  <Avatar name={t.title} online={t.group ? undefined : Boolean(p?.online)} />
                  <span class="thread-main">
                    <span class="thread-top">
                      <span class="thread-title">{t.title}</span>
                      <span class="thread-time">{when(t.last?.time ?? t.updated)}</span>
                    </span>
                    <span class="thread-bottom">
                      <span class="thread-preview">
                        {typing ? <em>{typing.name} is typing…</em> : pending ? `${pending} waiting to send` : preview(t.last, st.me.id, t.group)}
                      </span>
                      {t.unread > 0 && (
                        <span class="badge" data-unread={t.unread}>
                          {t.unread}
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
