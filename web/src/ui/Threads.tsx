// The thread list: newest first, with preview, time, unread count, the peer's online dot, a muted mark, and a search box; each item reads as one line.
import { useState } from "preact/hooks";
import type { Natter } from "../natter";
import { orderThreads } from "../sync";
import { initials, preview, when } from "./format";
import { go } from "./hooks";
import { BellOff } from "./Icons";

/** Lower case without accents, for matching names as people type them. */
export function fold(s: string): string {
  return s.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase();
}

/** A person's picture (its thumbnail; the whole image when `large`), or their initials while there is none or it loads. */
export function Avatar({
  name,
  online,
  picture,
  n,
  large,
}: {
  name: string;
  online?: boolean | undefined;
  picture?: string | undefined;
  n?: Natter | undefined;
  large?: boolean;
}) {
  const link = picture && n ? n.link(picture) : undefined;
  return (
    <span class={large ? "avatar large" : "avatar"} aria-hidden="true" data-avatar={link ? "picture" : "initials"}>
      {link ? <img src={large ? link.url : link.thumbnailUrl} alt="" /> : initials(name)}
      {online !== undefined && <span class={online ? "dot online" : "dot"} />}
    </span>
  );
}

const PAGE = 60;

export function Threads({ n, selected }: { n: Natter; selected: number }) {
  const st = n.state!;
  const [query, setQuery] = useState("");
  const q = fold(query.trim());
  const all = orderThreads(Object.values(st.threads).filter((t) => t.active || t.last));
  const matching = q ? all.filter((t) => fold(`${t.title} ${t.peer?.username ?? ""}`).includes(q)) : all;
  // Long lists render the first rows and grow as the reader scrolls down.
  const [limit, setLimit] = useState(PAGE);
  const threads = matching.slice(0, Math.max(limit, matching.findIndex((t) => t.id === selected) + 1));
  const withChat = new Set(all.flatMap((t) => (t.peer && !t.group ? [t.peer.id] : [])));
  const contacts = q
    ? st.contacts.filter((c) => !withChat.has(c.person.id) && fold(`${c.alias} ${c.person.name} ${c.person.username}`).includes(q))
    : [];
  return (
    <nav
      class="threads"
      aria-label="Chats"
      onScroll={(e) => {
        const el = e.currentTarget;
        if (threads.length < matching.length && el.scrollHeight - el.scrollTop - el.clientHeight < 400) setLimit(threads.length + PAGE);
      }}
    >
      <div class="search" role="search">
        <label for="chat-search" class="sr-only">
          Search chats and contacts
        </label>
        <input
          id="chat-search"
          type="search"
          dir="auto"
          placeholder="Search chats and contacts"
          autocomplete="off"
          value={query}
          onInput={(e) => setQuery(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === "Escape") setQuery("");
          }}
        />
      </div>
      {q && threads.length === 0 && contacts.length === 0 && <p class="empty">No chats or contacts match “{query.trim()}”.</p>}
      {!q && threads.length === 0 ? (
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
                  <Avatar name={t.title} online={t.group ? undefined : Boolean(p?.online)} picture={t.group ? undefined : t.peer?.picture} n={n} />
                  <span class="thread-main">
                    <span class="thread-top">
                      <span class="thread-title">
                        {t.title}
                        {p?.online && <span class="sr-only">, online</span>}
                        {t.muted && <span class="sr-only">, muted</span>}
                        <span class="sr-only">, </span>
                      </span>
                      <span class="thread-time">
                        {t.muted && (
                          <span class="muted-mark" data-muted="true">
                            <BellOff />
                          </span>
                        )}
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
      {contacts.length > 0 && (
        <>
          <h2 class="search-heading" id="search-contacts">
            Contacts
          </h2>
          <ul class="people search-contacts" aria-labelledby="search-contacts">
            {contacts.map((c) => (
              <li key={c.person.id} data-contact={c.person.username}>
                <Avatar name={c.alias || c.person.name} picture={c.person.picture} n={n} />
                <span class="person-main">
                  <span class="person-name">{c.alias || c.person.name}</span>
                  <span class="person-sub">@{c.person.username}</span>
                </span>
                <button
                  type="button"
                  class="secondary"
                  aria-label={`Message ${c.alias || c.person.name}`}
                  onClick={() => void n.directThread(c.person.username).then((id) => go(`/chat/${id}`))}
                >
                  Message
                </button>
              </li>
            ))}
          </ul>
        </>
      )}
    </nav>
  );
}
