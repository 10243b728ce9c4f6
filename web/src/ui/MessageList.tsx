// A chat's scrolling history, windowed: only a slice of it is in the DOM, the newest kept in view, older pages loaded in place.
import { Fragment } from "preact";
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import { problem } from "../api";
import type { Att, Msg, ThreadInfo } from "../model";
import type { Natter } from "../natter";
import { orderThreads, ticker as tickerOf } from "../sync";
import { Bubble, PendingBubble } from "./Bubble";
import { ForwardDialog } from "./Dialogs";
import { reportMessage } from "./Menus";
import { dayLabel, sameDay } from "./format";
import type { ActionPorts } from "./MessageActions";
import type { RichPorts } from "./Rich";
import { Viewer } from "./Viewer";

const GROUP_GAP_MS = 5 * 60 * 1000;

/** At most this many messages are rendered at once; scrolling moves the window by STEP. */
export const WINDOW = 120;
const STEP = 40;
/** Within this many pixels of an edge of what is rendered, the window moves (or older history loads). */
const EDGE = 300;

/** The window over the loaded list: the seqs at its ends; `end` null means it follows the newest message. */
interface Span {
  start: number | null;
  end: number | null;
}

/** Where the reader is, as the message at the top of the view and its distance from the scroller's top. */
interface Anchor {
  seq: string;
  offset: number;
}

function indexOfSeq(list: Msg[], seq: number): number {
  // Seqs are ascending: binary search for the first at or above seq.
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid].seq < seq) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The window's indexes into the list, [from, to). */
export function windowOf(list: Msg[], span: Span, size = WINDOW): [number, number] {
  const to = span.end === null ? list.length : Math.min(list.length, indexOfSeq(list, span.end) + 1);
  let from = span.start === null ? to - size : indexOfSeq(list, span.start);
  from = Math.max(0, from, to - size);
  return [from, to];
}

/**
 * `jumpTo` (a seq of a loaded message; 0 for none) moves the window around that message and
 * scrolls it into the middle of the view: for search results and quoted replies.
 */
export function MessageList({ n, t, jumpTo: jumpProp = 0 }: { n: Natter; t: ThreadInfo; jumpTo?: number }) {
  const st = n.state!;
  const id = t.id;
  // In groups, without the messages of blocked people when the user hides them (Settings, Privacy).
  const list = n.shown(id, st.messages[id] ?? []);
  const outbox = st.outbox.filter((p) => p.threadId === id && !p.change);
  // A jump asked for by a search hit or a tapped quote (n.jumpTo loads the history around it).
  const jumpTo = n.jump && n.jump.threadId === id && list.some((m) => m.seq === n.jump!.seq) ? n.jump.seq : jumpProp;
  const [viewing, setViewing] = useState<Att | null>(null);
  const [forwarding, setForwarding] = useState<Msg | null>(null);
  // Where the "unread messages" divider goes: fixed when the chat opens, so it stays while reading.
  const [unreadFrom, setUnreadFrom] = useState(0);
  useEffect(() => {
    setUnreadFrom(t.unread > 0 ? t.readSeq : 0);
  }, [id]);
  const ports = useMemo<RichPorts & ActionPorts>(
    () => ({
      link: (a) => n.link(a),
      view: (a) => setViewing(a),
      jump: (seq) => void n.jumpTo(id, seq).catch(() => undefined),
      react: (seq, emoji) => n.react(id, seq, emoji),
      watch: (fn) => n.subscribe(fn),
      reply: (m) => n.setDraft(id, { reply: m }),
      edit: (m) => n.setDraft(id, { edit: m }),
      deleteForEveryone: (seq) => n.deleteForEveryone(id, seq),
      deleteForMe: (seq) => n.deleteForMe(id, seq),
      forward: (m) => setForwarding(m),
      report: (m) => reportMessage(id, m.seq),
    }),
    [n, id],
  );
  const members = n.members(id);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const anchor = useRef<Anchor | null>(null);
  const jumping = useRef(0);
  const [span, setSpan] = useState<Span>({ start: null, end: null });
  const [olderError, setOlderError] = useState("");
  const [loadingOlder, setLoadingOlder] = useState(false);
  const retry = useCallback((clientMsgId: string) => n.retrySend(clientMsgId), [n]);
  const discard = useCallback((clientMsgId: string) => n.discard(clientMsgId), [n]);
  const ticker = useMemo(() => tickerOf(st.me.id, members), [st.me.id, members]);

  // Sending while scrolled up brings the newest messages, and the one sent, back into view.
  const queued = useRef(outbox.length);
  if (outbox.length > queued.current) {
    stick.current = true;
    if (span.end !== null) setSpan({ start: null, end: null });
  }
  queued.current = outbox.length;

  const [from, to] = windowOf(list, span);
  const following = to === list.length;
  const shown = list.slice(from, to);
  const more = st.olderMore[id] ?? (list[0]?.seq ?? 1) > 1;

  /** Remembers the message at the top of the view, to put it back there after the DOM changes. */
  function hold() {
    const el = scroller.current;
    if (!el) return;
    const top = el.getBoundingClientRect().top;
    for (const li of el.querySelectorAll<HTMLElement>("li[data-seq]")) {
      const r = li.getBoundingClientRect();
      if (r.bottom > top) {
        anchor.current = { seq: li.dataset.seq!, offset: r.top - top };
        return;
      }
    }
  }

  // Keep the reader's place when the window moves or older history arrives; otherwise keep
  // the newest message in view unless the reader has scrolled up.
  useLayoutEffect(() => {
    if (!jumpTo) return;
    const i = indexOfSeq(list, jumpTo);
    if (i >= list.length || list[i].seq !== jumpTo) return;
    const f = Math.max(0, i - WINDOW / 2);
    const e = Math.min(list.length, f + WINDOW);
    stick.current = false;
    jumping.current = jumpTo;
    setSpan({ start: list[f].seq, end: e >= list.length ? null : list[e - 1].seq });
  }, [jumpTo]);

  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const target = jumping.current && el.querySelector<HTMLElement>(`li[data-seq="${jumping.current}"]`);
    if (target) {
      jumping.current = 0;
      if (n.jump?.seq === Number(target.dataset.seq)) n.jump = null;
      target.scrollIntoView({ block: "center" });
      target.classList.add("flash");
      setTimeout(() => target.classList.remove("flash"), 2000);
      return;
    }
    const a = anchor.current;
    if (a) {
      anchor.current = null;
      const li = el.querySelector<HTMLElement>(`li[data-seq="${a.seq}"]`);
      if (li) el.scrollTop += li.getBoundingClientRect().top - el.getBoundingClientRect().top - a.offset;
      return;
    }
    if (stick.current) el.scrollTop = el.scrollHeight;
  });

  async function older() {
    hold();
    setLoadingOlder(true);
    try {
      await n.loadOlder(id);
      setOlderError("");
    } catch (e) {
      setOlderError(problem(e));
    } finally {
      setLoadingOlder(false);
    }
    // Show the page that came in: the window now starts at the oldest loaded message.
    const now = n.shown(id, st.messages[id] ?? []);
    if (now.length) {
      const end = Math.min(now.length, WINDOW) - 1;
      setSpan({ start: now[0].seq, end: end >= now.length - 1 ? null : now[end].seq });
    }
  }

  function onScroll(el: HTMLDivElement) {
    stick.current = following && el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    if (el.scrollTop < EDGE) {
      if (from > 0) {
        hold();
        const f = Math.max(0, from - STEP);
        const e = Math.min(list.length, f + WINDOW);
        setSpan({ start: list[f].seq, end: e >= list.length ? null : list[e - 1].seq });
      } else if (el.scrollTop < 10 && more && !loadingOlder && list.length) {
        void older();
      }
    } else if (!following && el.scrollHeight - el.scrollTop - el.clientHeight < EDGE) {
      hold();
      const e = Math.min(list.length, to + STEP);
      const f = Math.max(0, e - WINDOW);
      setSpan({ start: list[f].seq, end: e >= list.length ? null : list[e - 1].seq });
    }
  }

  return (
    <div
      class="messages"
      ref={scroller}
      tabIndex={0}
      role="log"
      aria-live="polite"
      aria-relevant="additions"
      aria-label={`Messages with ${t.title}`}
      onScroll={(e) => onScroll(e.currentTarget)}
    >
      {more && from === 0 && list.length > 0 && (
        <p class="older">
          <button type="button" class="link" onClick={older} disabled={loadingOlder}>
            {loadingOlder ? "Loading…" : "Load older messages"}
          </button>
          {olderError && <span class="error"> {olderError}</span>}
        </p>
      )}
      <ol class="message-list">
        {shown.map((m, i) => {
          const mine = m.sender.id === st.me.id;
          const prev = shown[i - 1];
          const newDay = !prev || !sameDay(prev.time, m.time);
          const divider = unreadFrom > 0 && m.seq > unreadFrom && (!prev || prev.seq <= unreadFrom) && !mine;
          const first = newDay || divider || !prev || !!prev.system || prev.sender.id !== m.sender.id || m.time - prev.time > GROUP_GAP_MS;
          return (
            <Fragment key={m.seq}>
              {newDay && (
                <li class="day" data-day={dayLabel(m.time)}>
                  <span>{dayLabel(m.time)}</span>
                </li>
              )}
              {divider && (
                <li class="unread-divider" data-testid="unread-divider">
                  <span>Unread messages</span>
                </li>
              )}
              <Bubble m={m} mine={mine} group={t.group} first={first} admin={t.admin} ports={ports} tick={mine && !m.system ? ticker(m) : null} />
            </Fragment>
          );
        })}
        {following && outbox.map((p) => <PendingBubble key={p.clientMsgId} p={p} onRetry={retry} onDiscard={discard} />)}
      </ol>
      {viewing && <Viewer a={viewing} url={n.link(viewing.id)?.url} onClose={() => setViewing(null)} />}
      {forwarding && (
        <ForwardDialog
          threads={orderThreads(Object.values(st.threads))}
          onClose={() => setForwarding(null)}
          onPick={(to) => {
            n.forward({ threadId: forwarding.threadId, seq: forwarding.seq }, to);
            setForwarding(null);
          }}
        />
      )}
    </div>
  );
}
