// A message's actions: reply, react, edit, delete (for everyone, for me), forward, copy and report.
import { useEffect, useRef, useState } from "preact/hooks";
import type { Msg } from "../model";
import { EmojiGrid, QUICK } from "./Emoji";
import { Icon } from "./Icons";

export const EDIT_WINDOW_MS = 15 * 60 * 1000;
export const DELETE_WINDOW_MS = 48 * 3600 * 1000;

export interface ActionPorts {
  reply: (m: Msg) => void;
  react: (seq: number, emoji: string) => void;
  edit: (m: Msg) => void;
  deleteForEveryone: (seq: number) => void;
  deleteForMe: (seq: number) => Promise<void>;
  forward: (m: Msg) => void;
  report: (m: Msg) => void;
}

/** The hover (desktop) or long-press (touch) menu of one message. */
export function MessageActions({ m, mine, admin, ports }: { m: Msg; mine: boolean; admin: boolean; ports: ActionPorts }) {
  const [open, setOpen] = useState<"" | "menu" | "react">("");
  const [error, setError] = useState("");
  const root = useRef<HTMLSpanElement>(null);
  useEffect(() => {
    if (!open) return;
    const close = (e: MouseEvent) => {
      if (!root.current?.contains(e.target as Node)) setOpen("");
    };
    document.addEventListener("mousedown", close);
    return () => document.removeEventListener("mousedown", close);
  }, [open]);
  if (m.deleted) return null;
  const age = Date.now() - m.time;
  const canEdit = mine && !!m.text && age < EDIT_WINDOW_MS;
  const canDelete = (mine && age < DELETE_WINDOW_MS) || admin;
  const act = (fn: () => void) => () => {
    setOpen("");
    fn();
  };
  return (
    <span
      class={`msg-actions${open ? " open" : ""}`}
      ref={root}
      onKeyDown={(e) => {
        if (e.key === "Escape" && open) {
          e.stopPropagation();
          setOpen("");
        }
      }}
    >
      <button type="button" class="act" aria-label="Reply" title="Reply" onClick={() => ports.reply(m)}>
        <Icon name="reply" />
      </button>
      <button type="button" class="act" aria-label="React" title="React" aria-expanded={open === "react"} onClick={() => setOpen(open === "react" ? "" : "react")}>
        <Icon name="smile" />
      </button>
      <button type="button" class="act" aria-label="More actions" title="More" aria-haspopup="menu" aria-expanded={open === "menu"} onClick={() => setOpen(open === "menu" ? "" : "menu")}>
        <Icon name="more" />
      </button>
      {open === "react" && (
        <span class="popover react-picker" role="group" aria-label="Pick a reaction">
          {QUICK.map((e) => (
            <button type="button" key={e} class="emoji" aria-label={`React ${e}`} onClick={act(() => ports.react(m.seq, e))}>
              {e}
            </button>
          ))}
          <EmojiGrid label="More reactions" onPick={(e) => { setOpen(""); ports.react(m.seq, e); }} />
        </span>
      )}
      {open === "menu" && (
        <span class="popover menu" role="menu" aria-label="Message actions">
          {canEdit && (
            <button type="button" role="menuitem" onClick={act(() => ports.edit(m))}>
              Edit
            </button>
          )}
          <button type="button" role="menuitem" onClick={act(() => ports.forward(m))}>
            Forward
          </button>
          {m.text && (
            <button type="button" role="menuitem" onClick={act(() => void navigator.clipboard?.writeText(m.text))}>
              Copy text
            </button>
          )}
          {canDelete && (
            <button type="button" role="menuitem" class="danger-item" onClick={act(() => { if (confirm("Delete this message for everyone?")) ports.deleteForEveryone(m.seq); })}>
              Delete for everyone
            </button>
          )}
          <button type="button" role="menuitem" class="danger-item" onClick={act(() => void ports.deleteForMe(m.seq).catch((e: unknown) => setError(String(e))))}>
            Delete for me
          </button>
          {!mine && (
            <button type="button" role="menuitem" onClick={act(() => ports.report(m))}>
              Report
            </button>
          )}
        </span>
      )}
      {error && <span class="error">{error}</span>}
    </span>
  );
}
