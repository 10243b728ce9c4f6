// What a Connection hands the app: messages, receipts, presence, typing and the connection's own news.
package dev.natter.client

import dev.natter.v1.Message
import dev.natter.v1.Presence
import dev.natter.v1.Receipt
import dev.natter.v1.Typing

/** One event of [Connection.events]. Use a `when` with an `else` branch: later SDKs add kinds. */
sealed interface Event {
    /**
     * A message of one of the user's threads, replayed, pushed, fetched to fill a gap, or sent
     * by this device (then [own] is true and [Message.getState] is SENT). Each `(thread, seq)`
     * comes once and in order per thread. Its [Message.getKind] may be `UNRECOGNIZED` when the
     * server is newer than this SDK (a kind added to the contracts later): show it as
     * unsupported, but it still counts as taken and moves the cursor.
     */
    data class Received(val message: Message, val own: Boolean) : Event

    /** A member of a thread received ([dev.natter.v1.ReceiptKind.RECEIPT_KIND_DELIVERED]) or read messages up to a seq. */
    data class ReceiptEvent(val receipt: Receipt) : Event

    /** A contact (or someone in a small shared thread) came online or went offline. */
    data class PresenceEvent(val presence: Presence) : Event

    /** Someone is typing in a thread, or stopped. */
    data class TypingEvent(val typing: Typing) : Event

    /** The user read a thread up to [seq] on another device. */
    data class ReadCursor(val threadId: Long, val seq: Long) : Event

    /** The replay after connecting is complete: what follows is live. */
    data class SyncDone(val replayed: Long) : Event

    /** A stream is open and welcomed, to [address] (socket server [nodeId]). */
    data class Connected(val nodeId: String, val address: String) : Event

    /**
     * The stream ended. Unless [final], the connection tries again by itself, with jittered
     * backoff; [final] means the device was logged out or its token is bad (see [error]).
     */
    data class Disconnected(val reason: String, val final: Boolean, val error: NatterException? = null) : Event

    /** The server refused a frame that was not a send (sends fail their own call instead). */
    data class Rejected(val error: NatterException) : Event
}
