// The connection debug page: the state machine's recent steps, newest first, to diagnose a stall.
import type { Natter } from "../natter";
import { go } from "./hooks";

function stamp(ms: number): string {
  const d = new Date(ms);
  return `${d.toLocaleTimeString([], { hour12: false })}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

export function Debug({ n, narrow }: { n: Natter; narrow: boolean }) {
  const rows = [...n.log].reverse();
  const text = n.log.map((e) => `${new Date(e.at).toISOString()} ${e.event}${e.detail ? `: ${e.detail}` : ""} → ${e.conn}`).join("\n");
  return (
    <section class="page" aria-labelledby="page-title">
      <header class="chat-head">
        {narrow && (
          <button type="button" class="icon" aria-label="Back to chats" onClick={() => go("/")}>
            ←
          </button>
        )}
        <h2 id="page-title">Connection log</h2>
      </header>
      <div class="page-body">
        <p>
          Now <strong data-testid="conn-state">{n.conn}</strong>; {n.log.length} steps kept in this tab (also on the
          browser console at its debug level).
        </p>
        <button type="button" class="secondary" onClick={() => void navigator.clipboard?.writeText(text)}>
          Copy the log
        </button>
        <div class="log-table" tabIndex={0} role="region" aria-label="Connection steps, newest first">
          <table>
            <thead>
              <tr>
                <th scope="col">Time</th>
                <th scope="col">Step</th>
                <th scope="col">Detail</th>
                <th scope="col">State after</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((e, i) => (
                <tr key={n.log.length - i} data-event={e.event}>
                  <td>{stamp(e.at)}</td>
                  <td>{e.event}</td>
                  <td>{e.detail}</td>
                  <td>{e.conn}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </div>
    </section>
  );
}
