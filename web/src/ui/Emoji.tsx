// An emoji picker: the quick reactions, and a grid for the composer and for more reactions.
import { useState } from "preact/hooks";
import { Icon } from "./Icons";

export const QUICK = ["👍", "❤️", "😂", "😮", "😢", "🙏"];

const ALL = [
  ..."😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗😚😋😛😜🤪😝🤗🤭🤫🤔🤐🤨😐😑😶😏😒🙄😬😌😔😪😴😷🤒🤕🥵🥶🥴😵🤯🤠🥳😎🤓🧐😕😟🙁😮😯😲😳🥺😦😧😨😰😥😢😭😱😖😣😞😓😩😫🥱😤😡😠🤬",
  ..."👍👎👌✌🤞🤟🤘🤙👈👉👆👇✋🤚🖐🖖👋🤝🙏💪👏🙌👐🤲",
  ..."🎉🎂🎁🎈🔥✨⭐🌟💯✅❌⚡☕🍕🍺🍷⚽🏆🚀🌍🌈☀🌙",
].filter((c) => c.trim() !== "");
const HEARTS = ["❤️", "🧡", "💛", "💚", "💙", "💜", "🖤", "🤍", "💔"];

/** A toggle that opens a grid of emoji; picking one calls onPick. */
export function EmojiGrid({ label, onPick }: { label: string; onPick: (emoji: string) => void }) {
  const [open, setOpen] = useState(false);
  return (
    <span class="emoji-picker">
      <button type="button" class="act" aria-label={label} title={label} aria-expanded={open} onClick={() => setOpen(!open)}>
        {open ? "×" : <Icon name="smile" />}
      </button>
      {open && (
        <span class="popover emoji-grid" role="group" aria-label="Emoji">
          {[...HEARTS, ...ALL].map((e) => (
            <button
              type="button"
              class="emoji"
              key={e}
              aria-label={e}
              onClick={() => {
                setOpen(false);
                onPick(e);
              }}
            >
              {e}
            </button>
          ))}
        </span>
      )}
    </span>
  );
}
