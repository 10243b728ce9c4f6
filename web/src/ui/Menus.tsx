// A chat's menu (mute, block, report), the report page, and the prompt that offers notifications.
import { useEffect, useRef, useState } from "preact/hooks";
import { type Natter, ReportReason } from "../natter";
import { go } from "./hooks";
import { BellOff } from "./Icons";
import { Page, useAction } from "./People";

const HOUR = 3600;

/** Opens the report page for one message; a bubble's message actions call this. */
export function reportMessage(threadId: number, seq: number): void {
  go(`/report/${threadId}/${seq}`);
}

/** The "⋮" menu of a chat's header. */
export function ChatMenu({ n, id }: { n: Natter; id: number }) {
  const t = n.state!.threads[id];
  const [open, setOpen] = useState(false);
  const [error, busy, run] = useAction();
  const root = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!open) return;
    root.current?.querySelector<HTMLButtonElement>("[role=menuitem]")?.focus();
    const away = (e: MouseEvent) => {
      if (root.current && !root.current.contains(e.target as Node)) setOpen(false);
    };
    document.addEventListener("mousedown", away);
    return () => document.removeEventListener("mousedown", away);
  }, [open]);
  if (!t) return null;
  const peer = t.peer;
  const blocked = peer ? Boolean(n.blocked[peer.id]) : false;
  const act = (fn: () => Promise<void>) => () => {
    setOpen(false);
    void run(fn);
  };
  const items: [string, () => void][] = t.muted
    ? [["Unmute", act(() => n.unmute(id))]]
    : [
        ["Mute for 8 hours", act(() => n.mute(id, 8 * HOUR))],
        ["Mute for 1 week", act(() => n.mute(id, 7 * 24 * HOUR))],
        ["Mute always", act(() => n.mute(id))],
      ];
  if (peer && !t.group) {
    items.push(blocked ? [`Unblock ${peer.name}`, act(() => n.unblock(peer))] : [`Block ${peer.name}`, act(() => n.block(peer))]);
    items.push([
      `Report ${peer.name}`,
      () => {
        setOpen(false);
        go(`/report/${id}`);
      },
    ]);
  }
  return (
    <div
      class="menu"
      ref={root}
      onKeyDown={(e) => {
        if (e.key === "Escape" && open) {
          e.stopPropagation();
          setOpen(false);
          root.current?.querySelector<HTMLButtonElement>(".menu-button")?.focus();
        }
        if ((e.key === "ArrowDown" || e.key === "ArrowUp") && open) {
          e.preventDefault();
          const all = [...(root.current?.querySelectorAll<HTMLButtonElement>("[role=menuitem]") ?? [])];
          const at = all.indexOf(document.activeElement as HTMLButtonElement);
          all[(at + (e.key === "ArrowDown" ? 1 : all.length - 1)) % all.length]?.focus();
        }
      }}
    >
      <button
        type="button"
        class="icon menu-button"
        aria-label="Chat menu"
        aria-haspopup="menu"
        aria-expanded={open}
        disabled={busy}
        onClick={() => setOpen(!open)}
      >
        <svg viewBox="0 0 24 24" width="24" height="24" aria-hidden="true">
          <circle cx="12" cy="5" r="2" fill="currentColor" />
          <circle cx="12" cy="12" r="2" fill="currentColor" />
          <circle cx="12" cy="19" r="2" fill="currentColor" />
        </svg>
      </button>
      {open && (
        <div class="menu-list" role="menu" aria-label={`${t.title} menu`}>
          {items.map(([label, fn]) => (
            <button type="button" role="menuitem" key={label} onClick={fn}>
              {label}
            </button>
          ))}
        </div>
      )}
      {t.muted && (
        <span class="muted-mark" role="img" aria-label="Muted" title="Muted">
          <BellOff />
        </span>
      )}
      {error && (
        <p class="error floating-error" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}

const REASONS: [ReportReason, string][] = [
  [ReportReason.SPAM, "Spam"],
  [ReportReason.HARASSMENT, "Harassment or bullying"],
  [ReportReason.SEXUAL, "Sexual content"],
  [ReportReason.SCAM, "Scam or fraud"],
  [ReportReason.ILLEGAL, "Something illegal"],
  [ReportReason.OTHER, "Something else"],
];

/** Reports the other person of a direct chat (their latest messages are copied), or one message. */
export function Report({ n, threadId, seq, narrow }: { n: Natter; threadId: number; seq: number; narrow: boolean }) {
  const st = n.state!;
  const t = st.threads[threadId];
  const m = seq ? (st.messages[threadId] ?? []).find((x) => x.seq === seq) : undefined;
  const who = m?.sender ?? t?.peer ?? null;
  const [reason, setReason] = useState(ReportReason.SPAM);
  const [text, setText] = useState("");
  const [block, setBlock] = useState(true);
  const [sent, setSent] = useState(false);
  const [error, busy, run] = useAction();
  const back = () => go(`/chat/${threadId}`);
  if (!t || !who) {
    return (
      <Page title="Report" narrow={narrow}>
        <p>There is nothing here to report.</p>
      </Page>
    );
  }
  return (
    <Page title={m ? "Report a message" : `Report ${who.name}`} narrow={narrow}>
      {sent ? (
        <>
          <p role="status">Thank you. The server's admins will look at it.{block ? ` ${who.name} is blocked.` : ""}</p>
          <button type="button" class="primary" onClick={back}>
            Back to the chat
          </button>
        </>
      ) : (
        <form
          class="stack"
          onSubmit={(e) => {
            e.preventDefault();
            void run(async () => {
              await n.report(
                m
                  ? { threadId, seqs: [m.seq], reason, text: text.trim(), block }
                  : { username: who.username, threadId, reason, text: text.trim(), block },
              );
              setSent(true);
            });
          }}
        >
          {m ? (
            <blockquote class="reported" dir="auto">
              <strong>{m.sender.name}:</strong> {m.text}
            </blockquote>
          ) : (
            <p>Their latest messages in this chat are sent with the report, for the server's admins only.</p>
          )}
          <fieldset>
            <legend>Why?</legend>
            {REASONS.map(([value, label]) => (
              <label class="check" key={value}>
                <input type="radio" name="reason" checked={reason === value} onChange={() => setReason(value)} />
                {label}
              </label>
            ))}
          </fieldset>
          <label for="report-text">Anything the admins should know (optional)</label>
          <textarea id="report-text" dir="auto" maxLength={1000} rows={3} value={text} onInput={(e) => setText(e.currentTarget.value)} />
          <label class="check">
            <input type="checkbox" checked={block} onChange={(e) => setBlock(e.currentTarget.checked)} />
            Also block {who.name}
          </label>
          <button class="primary" type="submit" disabled={busy}>
            Send report
          </button>
          <button type="button" class="secondary" onClick={back}>
            Cancel
          </button>
          {error && (
            <p class="error" role="alert">
              {error}
            </p>
          )}
        </form>
      )}
    </Page>
  );
}

/** A small bar offering notifications, shown after the first message sent here; never blocks anything. */
export function PushPrompt({ n }: { n: Natter }) {
  const [why, setWhy] = useState("");
  if (!n.askPush && !why) return null;
  return (
    <div class="push-prompt" role="region" aria-label="Notifications">
      {why ? (
        <>
          <p>{why}</p>
          <button type="button" class="secondary" onClick={() => setWhy("")}>
            OK
          </button>
        </>
      ) : (
        <>
          <p>Get a notification when a message comes while natter is closed?</p>
          <button
            type="button"
            class="primary"
            onClick={() => void n.enablePush().then(setWhy, () => setWhy("Notifications could not be turned on here; try again from Settings."))}
          >
            Turn on
          </button>
          <button type="button" class="secondary" onClick={() => n.dismissPushPrompt()}>
            Not now
          </button>
        </>
      )}
    </div>
  );
}
