// Searching message text: a box in the chat header; each hit jumps to its message.
import { useState } from "preact/hooks";
import type { Hit, Natter } from "../natter";
import { problem } from "../api";
import { clock, dayLabel } from "./format";
import { go } from "./hooks";

export function SearchBox({ n, threadId, onClose }: { n: Natter; threadId: number; onClose: () => void }) {
  const [q, setQ] = useState("");
  const [hits, setHits] = useState<Hit[] | null>(null);
  const [error, setError] = useState("");
  const [everywhere, setEverywhere] = useState(false);
  async function run(e: Event) {
    e.preventDefault();
    setError("");
    try {
      setHits(await n.search(q, everywhere ? 0 : threadId));
    } catch (err) {
      setHits(null);
      setError(problem(err));
    }
  }
  return (
    <div
      class="search"
      role="search"
      onKeyDown={(e) => {
        if (e.key === "Escape") {
          e.stopPropagation();
          onClose();
        }
      }}
    >
      <form class="search-row" onSubmit={run}>
        <label for="search-text" class="sr-only">
          Search messages
        </label>
        <input id="search-text" type="search" dir="auto" placeholder="Search messages" value={q} onInput={(e) => setQ(e.currentTarget.value)} autoFocus />
        <label class="check">
          <input type="checkbox" checked={everywhere} onChange={(e) => setEverywhere(e.currentTarget.checked)} /> All chats
        </label>
        <button type="submit" class="secondary">
          Search
        </button>
        <button type="button" class="act" aria-label="Close search" onClick={onClose}>
          ×
        </button>
      </form>
      {error && <p class="error">{error}</p>}
      {hits && (
        <ul class="hits" aria-label="Search results">
          {hits.length === 0 && <li class="muted">Nothing found.</li>}
          {hits.map((h) => (
            <li key={`${h.threadId}:${h.seq}`}>
              <button
                type="button"
                class="hit"
                data-hit={h.seq}
                onClick={() => {
                  if (h.threadId !== threadId) go(`/chat/${h.threadId}`);
                  void n.jumpTo(h.threadId, h.seq).catch(() => undefined);
                  onClose();
                }}
              >
                <span class="hit-head">
                  {h.m.sender.name}
                  {h.threadId !== threadId && h.title ? ` · ${h.title}` : ""} · {dayLabel(h.m.time)} {clock(h.m.time)}
                </span>
                <span class="hit-text" dir="auto">
                  {h.m.text || h.m.attachments?.[0]?.name}
                </span>
              </button>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
