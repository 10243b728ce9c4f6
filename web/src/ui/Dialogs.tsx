// Small dialogs of the chat screen: forward to a chat, report a message.
import { useEffect, useRef, useState } from "preact/hooks";
import type { Msg, ThreadInfo } from "../model";

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

export const REPORT_REASONS: [number, string][] = [
  [1, "Spam"],
  [2, "Harassment"],
  [3, "Unwanted sexual content"],
  [4, "Scam or impersonation"],
  [5, "Illegal content"],
  [6, "Something else"],
];

/** Report a message to the server's moderators (SafetyService.CreateReport). */
export function ReportDialog({ m, onReport, onClose }: { m: Msg; onReport: (reason: number, note: string) => Promise<void>; onClose: () => void }) {
  const [reason, setReason] = useState(1);
  const [note, setNote] = useState("");
  const [state, setState] = useState<"" | "sending" | "sent" | string>("");
  return (
    <Dialog label={`Report a message from ${m.sender.name}`} onClose={onClose}>
      {state === "sent" ? (
        <p role="status">Thanks — the report was sent.</p>
      ) : (
        <form
          class="stack"
          onSubmit={(e) => {
            e.preventDefault();
            setState("sending");
            onReport(reason, note).then(
              () => setState("sent"),
              (err: unknown) => setState(err instanceof Error ? err.message : String(err)),
            );
          }}
        >
          <label for="report-reason">Reason</label>
          <select id="report-reason" value={reason} onChange={(e) => setReason(Number(e.currentTarget.value))}>
            {REPORT_REASONS.map(([v, l]) => (
              <option key={v} value={v}>
                {l}
              </option>
            ))}
          </select>
          <label for="report-note">Anything to add (optional)</label>
          <textarea id="report-note" dir="auto" value={note} onInput={(e) => setNote(e.currentTarget.value)} />
          <button type="submit" class="primary" disabled={state === "sending"}>
            Send report
          </button>
          {state && state !== "sending" && <p class="error">{state}</p>}
        </form>
      )}
    </Dialog>
  );
}
