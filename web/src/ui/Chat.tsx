// One conversation: its header (title, presence or typing, group info), the message list and the composer.
import { useEffect } from "preact/hooks";
import type { Natter } from "../natter";
import { Composer } from "./Composer";
import { lastSeen } from "./format";
import { go } from "./hooks";
import { MessageList } from "./MessageList";

export function Chat({ n, id, narrow }: { n: Natter; id: number; narrow: boolean }) {
  const st = n.state!;
  const t = st.threads[id];
  const members = n.members(id);

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
      </header>
      <MessageList n={n} t={t} />
      <Composer n={n} threadId={id} disabled={!t.active} />
    </section>
  );
}
