// Small dialogs of the chat screen: forward to a chat (reporting a message is Menus.tsx's report page).
import { useEffect, useRef } from "preact/hooks";
import type { ThreadInfo } from "../model";

function Dialog({ label, onClose, children }: { label: string; onClose: () => void; children: preact.ComponentChildren }) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const before = document.activeElement as HTMLElement | null;
    box.current?.querySelector<HTMLElement>("button, input, select, textarea")?.focus();
    const key = (e: KeyboardEvent) => {
      if (e.key === "Escape") {
        e.preventDefault();
        e.stopPropagation();
        onClose();
      }
    };
    document.addEventListener("keydown", key, true);
    return () => {
      document.removeEventListener("keydown", key, true);
      before?.focus();
    };
  }, []);
  return (
    <div class="overlay" onClick={(e) => e.target === e.currentTarget && onClose()}>
      <div class="dialog" role="dialog" aria-modal="true" aria-label={label} ref={box}>
        <h3>{label}</h3>
        {children}
        <button type="button" class="secondary" onClick={onClose}>
          Cancel
        </button>
      </div>
    </div>
  );
}

/** Pick the chat a message is forwarded to. */
export function ForwardDialog({ threads, onPick, onClose }: { threads: ThreadInfo[]; onPick: (threadId: number) => void; onClose: () => void }) {
  return (
    <Dialog label="Forward to…" onClose={onClose}>
      <ul class="pick-list">
        {threads
          .filter((t) => t.active)
          .map((t) => (
            <li key={t.id}>
              <button type="button" class="secondary" onClick={() => onPick(t.id)}>
                {t.title}
              </button>
            </li>
          ))}
      </ul>
    </Dialog>
  );
}
