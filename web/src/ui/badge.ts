// The unread count in the tab's title and as a badge on its favicon.
import { useEffect } from "preact/hooks";
import type { Natter } from "../natter";

/** Unread messages in chats that are not muted (a muted chat does not nag). */
export function unreadTotal(n: Natter): number {
  const st = n.state;
  if (!st) return 0;
  return Object.values(st.threads).reduce((sum, t) => sum + (t.muted ? 0 : t.unread), 0);
}

const ICON = "/icons/icon-192.png";
let base: HTMLImageElement | null = null;
let shown = -1;

function drawBadge(count: number): void {
  const link = document.querySelector<HTMLLinkElement>('link[rel="icon"]');
  if (!link) return;
  link.dataset.unread = String(count);
  if (count === 0) {
    link.type = "image/svg+xml";
    link.href = "/icons/icon.svg";
    return;
  }
  const paint = () => {
    const c = document.createElement("canvas");
    c.width = c.height = 64;
    const g = c.getContext("2d");
    if (!g || !base) return;
    g.drawImage(base, 0, 0, 64, 64);
    g.fillStyle = "#d92d20";
    g.beginPath();
    g.arc(44, 20, 20, 0, 2 * Math.PI);
    g.fill();
    g.fillStyle = "#fff";
    g.font = "bold 26px system-ui, sans-serif";
    g.textAlign = "center";
    g.textBaseline = "middle";
    g.fillText(count > 99 ? "99" : String(count), 44, 21);
    link.type = "image/png";
    link.href = c.toDataURL("image/png");
  };
  if (base?.complete) paint();
  else {
    base = new Image();
    base.onload = paint;
    base.src = ICON;
  }
}

/** Keeps document.title ("(3) natter") and the favicon badge in step with the unread count. */
export function useUnreadBadge(n: Natter): void {
  const count = unreadTotal(n);
  useEffect(() => {
    document.title = count ? `(${count > 999 ? "999+" : count}) natter` : "natter";
    if (count !== shown) {
      shown = count;
      drawBadge(count);
    }
  }, [count]);
}
