// One conversation: its header (title, presence or typing, group info), the message list and the composer.
import { useEffect, useState } from "preact/hooks";
import type { Natter } from "../natter";
import { Composer, filesOf } from "./Composer";
import { lastSeen } from "./format";
import { go } from "./hooks";
import { ChatMenu } from "./Menus";
import { Icon } from "./Icons";
import { MessageList } from "./MessageList";
import { SearchBox } from "./Search";
import { Avatar } from "./Threads";

export function Chat({ n, id, narrow }: { n: Natter; id: number; narrow: boolean }) {
  const st = n.state!;
  const t = st.threads[id];
  const members = n.members(id);
  const [searching, setSearching] = useState(false);
  const [dropping, setDropping] = useState(false);

  useEffect(() => {
    n.openChat(id);
    return () => n.closeChat();
  }, [id]);

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

  return (
    <section
      class={`chat${dropping ? " dropping" : ""}`}
      aria-labelledby="chat-title"
      onDragOver={(e) => {
        if (!t.active || !e.dataTransfer?.types.includes("Files")) return;
        e.preventDefault();
        setDropping(true);
      }}
      onDragLeave={(e) => {
        if (e.currentTarget === e.target) setDropping(false);
      }}
      onDrop={(e) => {
        setDropping(false);
        const files = filesOf(e.dataTransfer);
        if (!files.length || !t.active) return;
        e.preventDefault();
        for (const f of files) n.attach(id, f);
      }}
    >
      <header class="chat-head">
        {narrow && (
          <button type="button" class="icon" aria-label="Back to chats" onClick={() => go("/")}>
            ←
          </button>
        )}
        <a class="head-avatar" href={t.group ? `#/chat/${id}/info` : `#/chat/${id}/profile`} title={t.group ? `About ${t.title}` : `Profile of ${t.title}`}>
          <Avatar name={t.title} picture={t.group ? undefined : t.peer?.picture} n={n} />
          <span class="sr-only">{t.group ? `About ${t.title}` : `Profile of ${t.title}`}</span>
        </a>
        <div class="chat-title">
          <h2 id="chat-title">{t.title}</h2>
          <p class="subtitle" aria-live="polite">
            {subtitle}
          </p>
        </div>
        <button type="button" class="icon" aria-label="Search messages" title="Search messages" aria-expanded={searching} onClick={() => setSearching(!searching)}>
          <Icon name="search" />
        </button>
        {t.group && (
          <a class="button secondary" href={`#/chat/${id}/info`} aria-label="Group info">
            Info
          </a>
        )}
        <ChatMenu n={n} id={id} />
      </header>
      {searching && <SearchBox n={n} threadId={id} onClose={() => setSearching(false)} />}
      <MessageList n={n} t={t} />
      <Composer n={n} threadId={id} disabled={!t.active} />
    </section>
  );
}
