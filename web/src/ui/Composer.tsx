// The message box under a chat: typing, size check, Enter to send; files (picker, drop, paste) with
// progress and retry, voice notes, emoji, and the reply or edit bar.
import { useEffect, useRef, useState } from "preact/hooks";
import type { Natter } from "../natter";
import { MAX_TEXT_BYTES, textProblem } from "../sync";
import { EmojiGrid } from "./Emoji";
import { Icon } from "./Icons";
import { size } from "./Rich";

/** Files dropped on or pasted into the chat go to the composer's uploads. */
export function filesOf(data: DataTransfer | null): File[] {
  if (!data) return [];
  return [...data.files];
}

function Recorder({ onDone, onError }: { onDone: (file: File, durationMs: number) => void; onError: (why: string) => void }) {
  const [rec, setRec] = useState<{ r: MediaRecorder; started: number } | null>(null);
  const [now, setNow] = useState(0);
  useEffect(() => {
    if (!rec) return;
    const t = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(t);
  }, [rec]);
  async function start() {
    if (!navigator.mediaDevices?.getUserMedia || typeof MediaRecorder === "undefined") {
      onError("This browser cannot record audio.");
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"].find((t) => MediaRecorder.isTypeSupported(t)) ?? "";
      const r = new MediaRecorder(stream, type ? { mimeType: type } : {});
      const chunks: Blob[] = [];
      const started = Date.now();
      r.ondataavailable = (e) => chunks.push(e.data);
      r.onstop = () => {
        for (const track of stream.getTracks()) track.stop();
        const mime = (r.mimeType || "audio/webm").split(";")[0];
        const ext = mime.includes("ogg") ? "ogg" : mime.includes("mp4") ? "m4a" : "webm";
        const blob = new Blob(chunks, { type: mime });
        if (blob.size > 0) onDone(new File([blob], `voice-note.${ext}`, { type: mime }), Date.now() - started);
      };
      r.start(250);
      setRec({ r, started });
      setNow(started);
    } catch (e) {
      onError(`The microphone is not available: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  if (!rec) {
    return (
      <button type="button" class="act" aria-label="Record a voice note" title="Record a voice note" onClick={() => void start()}>
        <Icon name="mic" />
      </button>
    );
  }
  const secs = Math.max(0, Math.round((now - rec.started) / 1000));
  return (
    <button
      type="button"
      class="act recording"
      aria-label={`Stop recording (${secs} seconds) and attach`}
      onClick={() => {
        rec.r.stop();
        setRec(null);
      }}
    >
      <Icon name="stop" /> {Math.floor(secs / 60)}:{String(secs % 60).padStart(2, "0")}
    </button>
  );
}

export function Composer({ n, threadId, disabled }: { n: Natter; threadId: number; disabled: boolean }) {
  const [text, setText] = useState("");
  const [error, setError] = useState("");
  const box = useRef<HTMLTextAreaElement>(null);
  const picker = useRef<HTMLInputElement>(null);
  const size_ = new TextEncoder().encode(text).length;
  const tooBig = size_ > MAX_TEXT_BYTES;
  const draft = n.draft[threadId] ?? {};
  const uploads = n.uploads.filter((u) => u.threadId === threadId);

  useEffect(() => {
    setText("");
    setError("");
    // Opening a chat puts the cursor in the box, except on touch screens, where that would
    // pop the keyboard up over the conversation the person came to read.
    if (!matchMedia("(pointer: coarse)").matches) box.current?.focus();
  }, [threadId]);

  // Editing puts the message's text in the box; replying focuses it.
  const editSeq = draft.edit?.seq ?? 0;
  useEffect(() => {
    if (draft.edit) setText(draft.edit.text);
    if (draft.edit || draft.reply) box.current?.focus();
  }, [editSeq, draft.reply?.seq ?? 0]);

  function attach(files: File[]) {
    for (const f of files) n.attach(threadId, f);
  }

  function submit(e?: Event) {
    e?.preventDefault();
    let why: string;
    if (draft.edit) {
      why = draft.edit.text === text ? "" : n.edit(threadId, draft.edit.seq, text);
    } else {
      why = n.sendWithUploads(threadId, text, draft.reply?.seq ?? 0);
    }
    if (why) {
      setError(why);
      return;
    }
    if (draft.edit || draft.reply) n.setDraft(threadId, {});
    setText("");
    setError("");
    box.current?.focus();
  }

  const canSend = !disabled && !tooBig && (text.trim() !== "" || (uploads.length > 0 && uploads.every((u) => u.done)));

  return (
    <form
      class="composer"
      onSubmit={submit}
      onPaste={(e) => {
        const files = filesOf(e.clipboardData);
        if (files.length) {
          e.preventDefault();
          attach(files);
        }
      }}
    >
      {(draft.reply || draft.edit) && (
        <div class="draft-bar" data-testid={draft.edit ? "editing" : "replying"}>
          <span class="draft-what">
            <strong>{draft.edit ? "Edit message" : `Reply to ${draft.reply!.sender.name}`}</strong>
            <span class="quote-text" dir="auto">
              {(draft.edit ?? draft.reply)!.text || (draft.reply?.attachments?.[0]?.name ?? "")}
            </span>
          </span>
          <button
            type="button"
            class="act"
            aria-label={draft.edit ? "Cancel editing" : "Cancel reply"}
            onClick={() => {
              if (draft.edit) setText("");
              n.setDraft(threadId, {});
            }}
          >
            ×
          </button>
        </div>
      )}
      {uploads.length > 0 && (
        <ul class="uploads" aria-label="Files to send">
          {uploads.map((u) => (
            <li key={u.key} class="upload" data-upload={u.file.name} data-done={u.done ? "true" : "false"}>
              {u.preview && u.file.type.startsWith("image/") ? <img src={u.preview} alt="" class="upload-thumb" /> : <span aria-hidden="true">{u.voice ? "🎤" : "📄"}</span>}
              <span class="upload-name">{u.voice ? "Voice note" : u.file.name}</span>
              <progress max={u.file.size || 1} value={u.sent} aria-label={`Uploading ${u.file.name}`} />
              <span class="muted">{u.done ? "ready" : u.error ? "" : `${Math.round((100 * u.sent) / (u.file.size || 1))}% of ${size(u.file.size)}`}</span>
              {u.error && (
                <>
                  <span class="error">{u.error}</span>
                  <button type="button" class="link" onClick={() => n.retryUpload(u.key)}>
                    Retry
                  </button>
                </>
              )}
              <button type="button" class="act" aria-label={`Remove ${u.file.name}`} onClick={() => n.dropUpload(u.key)}>
                ×
              </button>
            </li>
          ))}
        </ul>
      )}
      <div class="composer-row">
        <input
          ref={picker}
          id="composer-file"
          type="file"
          multiple
          class="sr-only"
          tabIndex={-1}
          aria-hidden="true"
          aria-label="Files to attach"
          onChange={(e) => {
            attach([...(e.currentTarget.files ?? [])]);
            e.currentTarget.value = "";
          }}
        />
        <button type="button" class="act" aria-label="Attach a file" title="Attach a file" disabled={disabled || !!draft.edit} onClick={() => picker.current?.click()}>
          <Icon name="attach" />
        </button>
        <EmojiGrid
          label="Insert an emoji"
          onPick={(emoji) => {
            const el = box.current;
            const at = el?.selectionStart ?? text.length;
            setText(text.slice(0, at) + emoji + text.slice(el?.selectionEnd ?? at));
            el?.focus();
          }}
        />
        <label for="composer-text" class="sr-only">
          Message
        </label>
        <textarea
          id="composer-text"
          ref={box}
          rows={1}
          dir="auto"
          placeholder={disabled ? "You can no longer send here" : uploads.length ? "Add a caption" : "Message"}
          disabled={disabled}
          value={text}
          aria-invalid={tooBig}
          aria-describedby={error || tooBig ? "composer-error" : undefined}
          onInput={(e) => {
            setText(e.currentTarget.value);
            setError("");
            n.typingInput(threadId, e.currentTarget.value);
          }}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
              e.preventDefault();
              submit();
            } else if (e.key === "Escape" && (draft.edit || draft.reply)) {
              e.preventDefault();
              e.stopPropagation();
              if (draft.edit) setText("");
              n.setDraft(threadId, {});
            }
          }}
        />
        {!draft.edit && (
          <Recorder onDone={(file, ms) => n.attach(threadId, file, true, ms)} onError={setError} />
        )}
        <button class="primary send" type="submit" disabled={!canSend}>
          {draft.edit ? "Save" : "Send"}
        </button>
      </div>
      {(error || tooBig) && (
        <p id="composer-error" class="error" role="alert">
          {error || textProblem(text)}
        </p>
      )}
    </form>
  );
}
