"""What a push carries: the Web Push JSON (encrypted to the browser) and the gateway's JSON.

The privacy mode decides what is in it, for both: FULL has the sender, the chat and the
text; SENDER_ONLY leaves the text out; HIDDEN leaves sender and chat out too, keeping only
where to open (the thread) and how many. docs/push.md lists it field by field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from natter.domain import Message, MessageKind, NotificationPreview, PushTarget, ThreadKind
from push_svc.notification import Notification

# RFC 8291 leaves 4096 - 103 bytes of plaintext in one aes128gcm record.
MAX_PLAINTEXT = 3993
# Payloads are padded up to one of these sizes, so their length says little about the text.
BUCKETS = (1024, 2048, 3072, MAX_PLAINTEXT)
# Text is cut to this many UTF-8 bytes; the person opens the chat for the rest.
MAX_TEXT_BYTES = 1800

_PREVIEW = {
    NotificationPreview.FULL: "full",
    NotificationPreview.SENDER_ONLY: "sender_only",
    NotificationPreview.HIDDEN: "hidden",
}


def _cut(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore") + "…"


def url(n: Notification) -> str:
    """Where tapping the notification goes in the web app."""
    return f"/#/chat/{n.thread_id}"


def urgency(n: Notification) -> str:
    """RFC 8030 Urgency: people's messages wake a phone, group events can wait a little."""
    return "high" if n.latest.kind is MessageKind.TEXT else "normal"


def content(n: Notification) -> dict[str, Any]:
    """The fields one notification shows, by the member's privacy mode."""
    m = n.latest
    out: dict[str, Any] = {
        "v": 1,
        "type": "message",
        "thread_id": n.thread_id,
        "seq": m.seq,
        "msg_id": m.msg_id,
        "count": n.count,
        "time": m.create_time.isoformat(),
        "preview": _PREVIEW[n.preview],
        "url": url(n),
    }
    if n.preview is NotificationPreview.HIDDEN:
        return out
    out["kind"] = "group" if n.thread_kind is ThreadKind.GROUP else "direct"
    out["sender"] = m.sender.display_name
    out["sender_username"] = m.sender.username
    out["system"] = m.kind is MessageKind.SYSTEM
    if n.thread_kind is ThreadKind.GROUP:
        out["title"] = n.title
    if n.preview is NotificationPreview.FULL:
        out["text"] = _cut(m.text or _attachment_label(m))
    return out


def _attachment_label(m: Message) -> str:
    """What a notification says of an attachment sent without a caption."""
    if not m.attachments:
        return ""
    a = m.attachments[0]
    if a.voice_note:
        return "🎤 Voice message"
    if a.mime_type.startswith("image/"):
        return "📷 Photo"
    if a.mime_type.startswith("video/"):
        return "🎥 Video"
    return f"📄 {a.name or 'File'}"


def web_push(n: Notification) -> bytes:
    """The JSON a browser's service worker receives, padded to a bucket size."""
    body = content(n)
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    size = next((b for b in BUCKETS if b >= len(raw) + 9), len(raw))
    if size > len(raw) + 9:
        body["pad"] = " " * (size - len(raw) - 9)  # ,"pad":"" is 9 bytes
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return raw


def gateway(n: Notification, targets: Sequence[PushTarget]) -> dict[str, Any]:
    """A push gateway request in the shape of Matrix's `/_matrix/push/v1/notify`.

    HIDDEN sends what Matrix calls `event_id_only`: ids and counts, nothing a person wrote.
    """
    m = n.latest
    note: dict[str, Any] = {
        "event_id": m.msg_id,
        "room_id": str(n.thread_id),
        "prio": "high" if urgency(n) == "high" else "low",
        "counts": {"unread": n.count},
        "devices": [
            {
                "app_id": t.app_id,
                "pushkey": t.pushkey,
                "pushkey_ts": int(t.create_time.timestamp()) if t.create_time else 0,
                "data": {},
                "tweaks": {},
            }
            for t in targets
        ],
    }
    shown = content(n)
    if n.preview is not NotificationPreview.HIDDEN:
        note["type"] = "m.room.message"
        note["sender"] = m.sender.username
        note["sender_display_name"] = m.sender.display_name
        if n.thread_kind is ThreadKind.GROUP:
            note["room_name"] = n.title
        if n.preview is NotificationPreview.FULL:
            msgtype = "m.notice" if m.kind is MessageKind.SYSTEM else "m.text"
            note["content"] = {"msgtype": msgtype, "body": shown["text"]}
    note["natter"] = shown
    return {"notification": note}
