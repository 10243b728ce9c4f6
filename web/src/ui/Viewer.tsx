// The image viewer: the full image over everything, closed by Escape, the close button or a click outside.
import { useEffect, useRef } from "preact/hooks";
import type { Att } from "../model";
import { size } from "./Rich";

export function Viewer({ a, url, onClose }: { a: Att; url: string | undefined; onClose: () => void }) {
  const close = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    const before = document.activeElement as HTMLElement | null;
    close.current?.focus();
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
    <div class="viewer" role="dialog" aria-modal="true" aria-label={`Photo ${a.name}`} onClick={(e) => e.target === e.currentTarget && onClose()}>
      <div class="viewer-bar">
        <span class="viewer-name">
          {a.name} <span class="muted">{size(a.size)}</span>
        </span>
        {url && (
          <a class="button secondary" href={url} download={a.name}>
            Download
          </a>
        )}
        <button type="button" class="button secondary" ref={close} onClick={onClose}>
          Close
        </button>
      </div>
      {url ? <img class="viewer-img" src={url} alt={a.name} data-full={a.id} /> : <p class="muted">Loading…</p>}
    </div>
  );
}
