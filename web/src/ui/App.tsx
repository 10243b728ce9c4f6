// The shell: log in, or the chat list beside the current page (one pane at a time on phones).
import { useEffect, useRef, useState } from "preact/hooks";
import type { Natter } from "../natter";
import { Auth } from "./Auth";
import { Chat } from "./Chat";
import { Debug } from "./Debug";
import { go, type Route, useNatter, useRoute } from "./hooks";
import { useUnreadBadge } from "./badge";
import { NavIcon } from "./Icons";
import { PushPrompt, Report } from "./Menus";
import { ContactProfile, Contacts, GroupInfo, NewGroup } from "./People";
import { Devices, Settings } from "./Settings";
import { Threads } from "./Threads";

const NARROW = "(max-width: 719px)";

function useNarrow(): boolean {
  const [narrow, setNarrow] = useState(() => matchMedia(NARROW).matches);
  useEffect(() => {
    const q = matchMedia(NARROW);
    const on = () => setNarrow(q.matches);
    q.addEventListener("change", on);
    return () => q.removeEventListener("change", on);
  }, []);
  return narrow;
}

const CONN_TEXT = {
  offline: "Offline: messages wait and are sent when you reconnect",
  connecting: "Connecting…",
  syncing: "Catching up…",
  online: "",
};

/** Where Escape leads from a page: a group's info back to its chat, anything else to the chat list. */
function backFrom(route: Route): string | null {
  if (route.name === "home") return null;
  if (route.name === "info" || route.name === "profile") return `/chat/${route.id}`;
  return "/";
}

function useEscapeBack(route: Route): void {
  useEffect(() => {
    const on = (e: KeyboardEvent) => {
      if (e.key !== "Escape" || e.defaultPrevented || e.isComposing) return;
      const to = backFrom(route);
      if (to === null) return;
      e.preventDefault();
      go(to);
    };
    addEventListener("keydown", on);
    return () => removeEventListener("keydown", on);
  }, [route]);
}

/**
 * The connection pill. It keeps its last words while it fades out (so it never shows empty),
 * and a separate status region says the change to screen readers once.
 */
function ConnPill({ text }: { text: string }) {
  const last = useRef(text);
  if (text) last.current = text;
  return (
    <>
      <div class={text ? "conn visible" : "conn"} aria-hidden="true" data-testid="connection">
        {last.current}
      </div>
      <div class="sr-only" role="status">
        {text}
      </div>
    </>
  );
}

export function App({ n }: { n: Natter }) {
  useNatter(n);
  useUnreadBadge(n);
  const route = useRoute();
  const narrow = useNarrow();
  useEscapeBack(route);
  const st = n.state;
  if (!st || st.expired) {
    if (route.name === "debug") {
      return (
        <main class="pane">
          <h1 class="sr-only">natter</h1>
          <Debug n={n} narrow={true} />
        </main>
      );
    }
    return <Auth n={n} />;
  }

  const selected = route.name === "chat" || route.name === "info" || route.name === "profile" ? route.id : 0;
  let page;
  switch (route.name) {
    case "chat":
      page = <Chat key={route.id} n={n} id={route.id} narrow={narrow} />;
      break;
    case "info":
      page = <GroupInfo key={route.id} n={n} id={route.id} narrow={narrow} />;
      break;
    case "profile":
      page = <ContactProfile key={route.id} n={n} id={route.id} narrow={narrow} />;
      break;
    case "contacts":
      page = <Contacts n={n} narrow={narrow} />;
      break;
    case "newGroup":
      page = <NewGroup n={n} narrow={narrow} />;
      break;
    case "devices":
      page = <Devices n={n} narrow={narrow} />;
      break;
    case "settings":
      page = <Settings n={n} narrow={narrow} />;
      break;
    case "report":
      page = <Report key={`${route.id}/${route.seq}`} n={n} threadId={route.id} seq={route.seq} narrow={narrow} />;
      break;
    case "debug":
      page = <Debug n={n} narrow={narrow} />;
      break;
    default:
      page = narrow ? null : (
        <section class="placeholder">
          <p>Pick a chat, or start one from your contacts.</p>
        </section>
      );
  }
  const showList = !narrow || route.name === "home";
  const status = CONN_TEXT[n.conn];
  // On a phone the chat list is the whole page at home: then it is the main landmark.
  const Side = page ? "aside" : "main";
  return (
    <div class={narrow ? "shell narrow" : "shell"} data-conn={n.conn}>
      {showList && (
        <Side class="sidebar">
          <header class="top">
            <h1 class="logo">natter</h1>
            <span class="me" title={`@${st.me.username}`}>
              {st.me.name}
            </span>
          </header>
          <nav class="actions" aria-label="Main">
            {/* Icons with their names; on phones only the icons show (the name stays for screen readers). */}
            <a class="button secondary" href="#/contacts" aria-label="Contacts" title="Contacts">
              <NavIcon name="contacts" />
              <span class="nav-text">Contacts</span>
            </a>
            <a class="button secondary" href="#/new-group" aria-label="New group" title="New group">
              <NavIcon name="group" />
              <span class="nav-text">New group</span>
            </a>
            <a class="button secondary" href="#/devices" aria-label="Devices" title="Devices">
              <NavIcon name="devices" />
              <span class="nav-text">Devices</span>
            </a>
            <a class="button secondary" href="#/settings" aria-label="Settings" title="Settings">
              <NavIcon name="settings" />
              <span class="nav-text">Settings</span>
            </a>
          </nav>
          <Threads n={n} selected={selected} />
        </Side>
      )}
      {page && (
        <main class="pane">
          {!showList && <h1 class="sr-only">natter</h1>}
          {page}
        </main>
      )}
      <ConnPill text={status} />
      <PushPrompt n={n} />
      {n.notice && (
        <div class="notice floating" role="alert">
          {n.notice}
        </div>
      )}
      <div class="sr-only" aria-live="polite" aria-atomic="true" data-testid="announcer">
        {n.announcement}
      </div>
    </div>
  );
}
