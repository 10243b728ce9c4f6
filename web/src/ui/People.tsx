// Contacts with presence, new groups, group info and member management.
import { useEffect, useState } from "preact/hooks";
import { isUnimplemented, problem } from "../api";
import type { Natter } from "../natter";
import { lastSeen } from "./format";
import { go } from "./hooks";
import { Avatar } from "./Threads";

export function useAction(): [string, boolean, (fn: () => Promise<void>) => Promise<void>] {
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  async function run(fn: () => Promise<void>) {
    setBusy(true);
    setError("");
    try {
      await fn();
    } catch (e) {
      setError(isUnimplemented(e) ? "This server does not support that yet." : problem(e));
    } finally {
      setBusy(false);
    }
  }
  return [error, busy, run];
}

export function Page({ title, children, narrow }: { title: string; children: preact.ComponentChildren; narrow: boolean }) {
  return (
    <section class="page" aria-labelledby="page-title">
      <header class="chat-head">
        {narrow && (
          <button type="button" class="icon" aria-label="Back to chats" onClick={() => go("/")}>
            ←
          </button>
        )}
        <h2 id="page-title">{title}</h2>
      </header>
      <div class="page-body">{children}</div>
    </section>
  );
}

export function Contacts({ n, narrow }: { n: Natter; narrow: boolean }) {
  const st = n.state!;
  const [name, setName] = useState("");
  const [error, busy, run] = useAction();

  useEffect(() => {
    void n.refreshContacts();
  }, []);

  return (
    <Page title="Contacts" narrow={narrow}>
      <form
        class="inline-form"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            await n.addContact(name.trim().toLowerCase());
            setName("");
          });
        }}
      >
        <label for="add-contact">Add a contact by username or phone</label>
        <div class="row">
          <input id="add-contact" autocapitalize="none" spellcheck={false} required value={name} onInput={(e) => setName(e.currentTarget.value)} />
          <button class="primary" type="submit" disabled={busy}>
            Add
          </button>
        </div>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
      </form>
      {st.contacts.length === 0 ? (
        <p class="empty">No contacts yet.</p>
      ) : (
        <ul class="people">
          {st.contacts.map((c) => {
            const p = st.presence[c.person.id];
            return (
              <li key={c.person.id} data-contact={c.person.username}>
                <Avatar name={c.alias || c.person.name} online={Boolean(p?.online)} picture={c.person.picture} n={n} />
                <span class="person-main">
                  <span class="person-name">{c.alias || c.person.name}</span>
                  <span class="person-sub">
                    @{c.person.username}
                    {p ? ` · ${lastSeen(p)}` : ""}
                  </span>
                </span>
                <button
                  type="button"
                  class="secondary"
                  aria-label={`Message ${c.alias || c.person.name}`}
                  onClick={() => void run(async () => go(`/chat/${await n.directThread(c.person.username)}`))}
                >
                  Message
                </button>
              </li>
            );
          })}
        </ul>
      )}
    </Page>
  );
}

function splitNames(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((x) => x.trim().toLowerCase().replace(/^@/, ""))
    .filter(Boolean);
}

export function NewGroup({ n, narrow }: { n: Natter; narrow: boolean }) {
  const st = n.state!;
  const [title, setTitle] = useState("");
  const [picked, setPicked] = useState<Set<string>>(new Set());
  const [others, setOthers] = useState("");
  const [error, busy, run] = useAction();

  function toggle(username: string) {
    const next = new Set(picked);
    if (next.has(username)) next.delete(username);
    else next.add(username);
    setPicked(next);
  }

  return (
    <Page title="New group" narrow={narrow}>
      <form
        class="stack"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            const members = [...new Set([...picked, ...splitNames(others)])];
            const id = await n.createGroup(title.trim(), members);
            go(`/chat/${id}`);
          });
        }}
      >
        <label for="group-title">Group name</label>
        <input id="group-title" required maxLength={128} value={title} onInput={(e) => setTitle(e.currentTarget.value)} />
        {st.contacts.length > 0 && (
          <fieldset>
            <legend>Members from your contacts</legend>
            {st.contacts.map((c) => (
              <label class="check" key={c.person.id}>
                <input type="checkbox" checked={picked.has(c.person.username)} onChange={() => toggle(c.person.username)} />
                {c.alias || c.person.name} <span class="muted">@{c.person.username}</span>
              </label>
            ))}
          </fieldset>
        )}
        <label for="group-others">Other members (usernames, separated by commas)</label>
        <input id="group-others" autocapitalize="none" spellcheck={false} value={others} onInput={(e) => setOthers(e.currentTarget.value)} />
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button class="primary" type="submit" disabled={busy}>
          Create group
        </button>
      </form>
    </Page>
  );
}

export function GroupInfo({ n, id, narrow }: { n: Natter; id: number; narrow: boolean }) {
  const st = n.state!;
  const t = st.threads[id];
  const members = n.members(id) ?? [];
  const [title, setTitle] = useState(t?.title ?? "");
  const [adding, setAdding] = useState("");
  const [error, busy, run] = useAction();

  useEffect(() => {
    void n.loadMembers(id);
  }, [id]);
  useEffect(() => setTitle(t?.title ?? ""), [t?.title]);

  if (!t) return <Page title="Group" narrow={narrow}>{null}</Page>;
  const admin = t.admin && t.active;
  return (
    <Page title={`About ${t.title}`} narrow={narrow}>
      <p>
        <a href={`#/chat/${id}`}>Back to the chat</a>
      </p>
      {admin && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void run(() => n.renameGroup(id, title.trim()));
          }}
        >
          <label for="rename">Group name</label>
          <div class="row">
            <input id="rename" required maxLength={128} value={title} onInput={(e) => setTitle(e.currentTarget.value)} />
            <button type="submit" class="secondary" disabled={busy}>
              Rename
            </button>
          </div>
        </form>
      )}
      <h3>{members.length} members</h3>
      <ul class="people">
        {members.map((m) => {
          const p = st.presence[m.person.id];
          const me = m.person.id === st.me.id;
          return (
            <li key={m.person.id} data-member={m.person.username}>
              <Avatar name={m.person.name} online={Boolean(p?.online) || me} picture={m.person.picture} n={n} />
              <span class="person-main">
                <span class="person-name">
                  {m.person.name}
                  {me ? " (you)" : ""}
                </span>
                <span class="person-sub">
                  @{m.person.username}
                  {m.admin ? " · admin" : ""}
                  {p && !me ? ` · ${lastSeen(p)}` : ""}
                </span>
              </span>
              {admin && !me && (
                <button type="button" class="secondary" aria-label={`Remove ${m.person.name}`} disabled={busy} onClick={() => void run(() => n.removeMembers(id, [m.person.username]))}>
                  Remove
                </button>
              )}
            </li>
          );
        })}
      </ul>
      {admin && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void run(async () => {
              await n.addMembers(id, splitNames(adding));
              setAdding("");
            });
          }}
        >
          <label for="add-members">Add members (usernames, separated by commas)</label>
          <div class="row">
            <input id="add-members" autocapitalize="none" spellcheck={false} required value={adding} onInput={(e) => setAdding(e.currentTarget.value)} />
            <button type="submit" class="primary" disabled={busy}>
              Add
            </button>
          </div>
        </form>
      )}
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {t.active && (
        <button
          type="button"
          class="danger"
          disabled={busy}
          onClick={() =>
            void run(async () => {
              await n.leaveGroup(id);
              go("/");
            })
          }
        >
          Leave group
        </button>
      )}
    </Page>
  );
}

/** A contact's profile, opened from the chat header: picture, name, username and about. */
export function ContactProfile({ n, id, narrow }: { n: Natter; id: number; narrow: boolean }) {
  const st = n.state!;
  const peer = n.peerOf(id);
  const contact = peer ? st.contacts.find((c) => c.person.id === peer.id) : undefined;
  useEffect(() => {
    void n.loadMembers(id);
  }, [id]);
  if (!peer) return <Page title="Profile" narrow={narrow}>{null}</Page>;
  const shown = contact?.person.id === peer.id && contact.alias ? contact.alias : peer.name;
  return (
    <Page title={shown} narrow={narrow}>
      <p>
        <a href={`#/chat/${id}`}>Back to the chat</a>
      </p>
      <div class="contact-profile" data-profile={peer.username}>
        <Avatar name={peer.name} picture={peer.picture} n={n} large />
        <p class="person-name">{peer.name}</p>
        <p class="person-sub">@{peer.username}</p>
        <h3 id="profile-about">About</h3>
        <p class="about" dir="auto" aria-labelledby="profile-about" data-about>
          {peer.about || "No about yet."}
        </p>
      </div>
    </Page>
  );
}
