// What a message holds, inside its bubble: the quote, photos, files, voice notes, text with safe links, marks and reactions.
import { useEffect, useState } from "preact/hooks";
import { edited, isKnown, KIND, kindOf, reactionCounts } from "../fold";
import type { Att, Msg } from "../model";

/** What a bubble's content needs of the controller: signed links, and where a tap goes. */
export interface RichPorts {
  link: (attachmentId: string) => { url: string; thumbnailUrl: string } | undefined;
  view: (att: Att) => void;
  jump: (seq: number) => void;
  react: (seq: number, emoji: string) => void;
  /** Calls fn on every change of the controller (a link arrived); returns the unsubscribe. */
  watch: (fn: () => void) => () => void;
}

/** An attachment's signed links, once they arrive (bubbles are memoised: they wait themselves). */
function useLink(ports: RichPorts, id: string) {
  const [l, setL] = useState(() => ports.link(id));
  useEffect(() => {
    if (l) return;
    const now = ports.link(id);
    if (now) {
      setL(now);
      return;
    }
    return ports.watch(() => {
      const got = ports.link(id);
      if (got) setL(got);
    });
  }, [id, !!l]);
  return l;
}

const LINK = /\b(?:https?:\/\/|mailto:)[^\s<>"']+/giu;
const COLLAPSE_CHARS = 700;

/** Only http, https and mailto become links; everything else stays text. */
export function safeHref(raw: string): string | null {
  const trimmed = raw.replace(/[.,;:!?)\]}'"]+$/u, "");
  try {
    const u = new URL(trimmed);
    return u.protocol === "http:" || u.protocol === "https:" || u.protocol === "mailto:" ? u.href : null;
  } catch {
    return null;
  }
}

/** Text with its links clickable (opened in a new tab, without an opener or a referrer). */
export function Linked({ text }: { text: string }) {
  const out: (string | preact.JSX.Element)[] = [];
  let at = 0;
  for (const match of text.matchAll(LINK)) {
    const raw = match[0].replace(/[.,;:!?)\]}'"]+$/u, "");
    const href = safeHref(raw);
    const start = match.index ?? 0;
    if (!href) continue;
    out.push(text.slice(at, start));
    out.push(
      <a href={href} target="_blank" rel="noopener noreferrer" key={start}>
        {raw}
      </a>,
    );
    at = start + raw.length;
  }
  out.push(text.slice(at));
  return <>{out}</>;
}

function MessageText({ text }: { text: string }) {
  const [open, setOpen] = useState(false);
  const long = text.length > COLLAPSE_CHARS;
  const shown = long && !open ? `${text.slice(0, COLLAPSE_CHARS).trimEnd()}…` : text;
  return (
    <>
      <span class="text" dir="auto">
        <Linked text={shown} />
      </span>
      {long && (
        <button type="button" class="link read-more" aria-expanded={open} onClick={() => setOpen(!open)}>
          {open ? "Show less" : "Read more"}
        </button>
      )}
    </>
  );
}

export function size(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

const B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

/** The average colour of a BlurHash (its DC component): painted at once, before any byte loads. */
export function blurColour(hash: string): string {
  if (hash.length < 6) return "#dfe7e3";
  let v = 0;
  for (const c of hash.slice(2, 6)) {
    const d = B83.indexOf(c);
    if (d < 0) return "#dfe7e3";
    v = v * 83 + d;
  }
  return `#${v.toString(16).padStart(6, "0")}`;
}

function Photo({ a, ports }: { a: Att; ports: RichPorts }) {
  const l = useLink(ports, a.id);
  const [loaded, setLoaded] = useState(false);
  const w = Math.min(240, a.width || 240);
  const h = a.width && a.height ? Math.round((w * a.height) / a.width) : 180;
  return (
    <button
      type="button"
      class="photo"
      style={{ width: `${w}px`, height: `${Math.min(h, 320)}px`, background: blurColour(a.blurhash) }}
      aria-label={`Open photo ${a.name}`}
      data-attachment={a.id}
      onClick={() => ports.view(a)}
    >
      {l && (
        <img
          src={a.thumb ? l.thumbnailUrl : l.url}
          alt={a.name}
          class={loaded ? "loaded" : ""}
          onLoad={() => setLoaded(true)}
          width={w}
          height={Math.min(h, 320)}
        />
      )}
    </button>
  );
}

function Voice({ a, ports }: { a: Att; ports: RichPorts }) {
  const l = useLink(ports, a.id);
  return (
    <span class="voice" data-attachment={a.id}>
      <span aria-hidden="true">🎤</span>
      {l ? <audio controls preload="none" src={l.url} aria-label={`Voice note, ${duration(a.durationMs)}`} /> : <span class="muted">loading…</span>}
      <span class="muted">{duration(a.durationMs)}</span>
    </span>
  );
}

function FileLink({ a, ports }: { a: Att; ports: RichPorts }) {
  const l = useLink(ports, a.id);
  return (
    <a class="file" href={l?.url ?? "#"} download={a.name} data-attachment={a.id} aria-label={`Download ${a.name}, ${size(a.size)}`} aria-disabled={!l}>
      <span aria-hidden="true">📄</span> <span class="file-name">{a.name}</span> <span class="muted">{size(a.size)}</span>
    </a>
  );
}

function Attachment({ a, ports }: { a: Att; ports: RichPorts }) {
  if (a.mime.startsWith("image/")) return <Photo a={a} ports={ports} />;
  if (a.voice || a.mime.startsWith("audio/")) return <Voice a={a} ports={ports} />;
  return <FileLink a={a} ports={ports} />;
}

/** The content of a delivered message, between the sender's name and the time. */
export function RichContent({ m, ports }: { m: Msg; ports: RichPorts }) {
  if (!isKnown(m)) {
    return (
      <span class="text unsupported" data-kind={kindOf(m)}>
        Unsupported message — update the app
      </span>
    );
  }
  if (m.deleted) {
    return (
      <span class="text deleted" data-deleted="true">
        This message was deleted
      </span>
    );
  }
  const counts = reactionCounts(m);
  return (
    <>
      {m.forwarded && <span class="forwarded">↪ Forwarded</span>}
      {m.replyTo && (
        <button type="button" class="quote" data-quote={m.replyTo.seq} onClick={() => ports.jump(m.replyTo!.seq)} aria-label={`Reply to ${m.replyTo.sender.name}: ${m.replyTo.snippet}. Show the original`}>
          <span class="quote-name">{m.replyTo.sender.name}</span>
          <span class="quote-text" dir="auto">
            {m.replyTo.snippet}
          </span>
        </button>
      )}
      {kindOf(m) === KIND.ATTACHMENT && (
        <span class="attachments">
          {(m.attachments ?? []).map((a) => (
            <Attachment key={a.id} a={a} ports={ports} />
          ))}
        </span>
      )}
      {m.text && <MessageText text={m.text} />}
      {edited(m) && <span class="edited" data-edited="true">edited</span>}
      {counts.length > 0 && (
        <span class="reactions" aria-label="Reactions">
          {counts.map((c) => (
            <button type="button" class="reaction" key={c.emoji} data-emoji={c.emoji} title={c.names.join(", ")} aria-label={`${c.emoji} ${c.count}: ${c.names.join(", ")}`} onClick={() => ports.react(m.seq, c.emoji)}>
              {c.emoji} <span class="count">{c.count}</span>
            </button>
          ))}
        </span>
      )}
    </>
  );
}
