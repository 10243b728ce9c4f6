// The message box under a chat: typing, size check, Enter to send.
import { useEffect, useRef, useState } from "preact/hooks";
import type { Natter } from "../natter";
import { MAX_TEXT_BYTES, textProblem } from "../sync";

export function Composer({ n, threadId, disabled }: { n: Natter; threadId: number; disabled: boolean }) {
  const [text, setText] = useState("");
  const [error, setError] = useState("");
  const box = useRef<HTMLTextAreaElement>(null);
  const size = new TextEncoder().encode(text).length;
  const tooBig = size > MAX_TEXT_BYTES;

  useEffect(() => {
    setText("");
    setError("");
    // Opening a chat puts the cursor in the box, except on touch screens, where that would
    // pop the keyboard up over the conversation the person came to read.
    if (!matchMedia("(pointer: coarse)").matches) box.current?.focus();
  }, [threadId]);

  function submit(e?: Event) {
    e?.preventDefault();
    const why = n.send(threadId, text);
    if (why) {
      setError(why);
      return;
    }
    setText("");
    setError("");
    box.current?.focus();
  }

  return (
    <form class="composer" onSubmit={submit}>
      <label for="composer-text" class="sr-only">
        Message
      </label>
      <textarea
        id="composer-text"
        ref={box}
        rows={1}
        placeholder={disabled ? "You can no longer send here" : "Message"}
        disabled={disabled}
        value={text}
        aria-invalid={tooBig}
        aria-describedby={error || tooBig ? "composer-error" : undefined}
        onInput={(e) => {
          setText(e.currentTarget.value);
          setError("");
          n.typingInput(threadId);
        }}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            submit();
          }
        }}
      />
      <button class="primary send" type="submit" disabled={disabled || tooBig || text.trim() === ""}>
        Send
      </button>
      {(error || tooBig) && (
        <p id="composer-error" class="error" role="alert">
          {error || textProblem(text)}
        </p>
      )}
    </form>
  );
}
