// A chat's scrolling history: keeps the newest in view, pages older messages in and holds the reader's place.
import { Fragment } from "preact";
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import { problem } from "../api";
import type { Att, Msg, ThreadInfo } from "../model";
import type { Natter } from "../natter";
import { orderThreads, tickOf } from "../sync";
import { Bubble, PendingBubble } from "./Bubble";
import { ForwardDialog, ReportDialog } from "./Dialogs";
import { dayLabel, sameDay } from "./format";
import type { ActionPorts } from "./MessageActions";
import type { RichPorts } from "./Rich";
import { Viewer } from "./Viewer";

const GROUP_GAP_MS = 5 * 60 * 1000;

export function MessageList({ n, t }: { n: Natter; t: ThreadInfo }) {
  const st = n.state!;
  const id = t.id;
  const list = st.messages[id] ?? [];
  const outbox = st.outbox.filter((p) => p.threadId === id && !p.change);
  const [viewing, setViewing] = useState<Att | null>(null);
  const [forwarding, setForwarding] = useState<Msg | null>(null);
  const [reporting, setReporting] = useState<Msg | null>(null);
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
      report: (m) => setReporting(m),
    }),
    [n, id],
  );

  // Jump to a message (a search hit, a tapped quote): scroll it into view and highlight it.
  const jump = n.jump;
  useLayoutEffect(() => {
    if (!jump || jump.threadId !== id) return;
    const el = scroller.current?.querySelector<HTMLElement>(`[data-seq="${jump.seq}"]`);
    if (!el) return;
    stick.current = false;
    el.scrollIntoView({ block: "center" });
    el.classList.add("flash");
    el.tabIndex = -1;
    el.focus({ preventScroll: true });
    const timer = setTimeout(() => el.classList.remove("flash"), 2000);
    n.jump = null;
    return () => clearTimeout(timer);
  });
  const members = n.members(id);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const [olderError, setOlderError] = useState("");
  const [loadingOlder, setLoadingOlder] = useState(false);
  const retry = useCallback((clientMsgId: string) => n.retrySend(clientMsgId), [n]);
  const discard = useCallback((clientMsgId: string) => n.discard(clientMsgId), [n]);

  useEffect(() => {
    stick.current = true;
  }, [id]);

  // Keep the newest message in view unless the reader has scrolled up.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  });

  async function older() {
    const el = scroller.current;
    const before = el ? el.scrollHeight - el.scrollTop : 0;
    setLoadingOlder(true);
    try {
      await n.loadOlder(id);
      setOlderError("");
    } catch (e) {
      setOlderError(problem(e));
    } finally {
      setLoadingOlder(false);
    }
    if (el) el.scrollTop = el.scrollHeight - before;
  }

  const more = st.olderMore[id] ?? (list[0]?.seq ?? 1) > 1;

  return (
    <div
      class="messages"
      ref={scroller}
      onScroll={(e) => {
        const el = e.currentTarget;
        stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
        if (el.scrollTop < 10 && more && !loadingOlder && list.length) void older();
      }}
    >
      {more && list.length > 0 && (
        <p class="older">
          <button type="button" class="link" onClick={older} disabled={loadingOlder}>
            {loadingOlder ? "Loading…" : "Load older messages"}
          </button>
          {olderError && <span class="error"> {olderError}</span>}
        </p>
      )}
      <ol class="message-list" role="log" aria-label={`Messages with ${t.title}`} aria-live="polite" aria-relevant="additions">
        {list.map((m, i) => {
          const mine = m.sender.id === st.me.id;
          const prev = list[i - 1];
          const newDay = !prev || !sameDay(prev.time, m.time);
          const divider = unreadFrom > 0 && m.seq > unreadFrom && (!prev || prev.seq <= unreadFrom) && !mine;
          const first = newDay || divider || !prev || !!prev.system || prev.sender.id !== m.sender.id || m.time - prev.time > GROUP_GAP_MS;
          return (
            <Fragment key={m.seq}>
              {newDay && (
                <li class="day" role="separator" data-day={dayLabel(m.time)}>
                  <span>{dayLabel(m.time)}</span>
                </li>
              )}
              {divider && (
                <li class="unread-divider" role="separator" data-testid="unread-divider">
                  <span>Unread messages</span>
                </li>
              )}
              <Bubble m={m} mine={mine} group={t.group} first={first} admin={t.admin} ports={ports} tick={mine && !m.system ? tickOf(m, st.me.id, members) : null} />
            </Fragment>
          );
        })}
        {outbox.map((p) => (
          <PendingBubble key={p.clientMsgId} p={p} onRetry={retry} onDiscard={discard} />
        ))}
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
      {reporting && <ReportDialog m={reporting} onClose={() => setReporting(null)} onReport={(reason, note) => n.report(reporting, reason, note)} />}
    </div>
  );
}
