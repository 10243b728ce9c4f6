// What a Connection hands the app: messages, receipts, presence, typing and the connection's own news.
package dev.natter.client

import dev.natter.v1.Message
import dev.natter.v1.Presence
import dev.natter.v1.Receipt
import dev.natter.v1.Typing
import dev.natter.v1.UserChange

/** One event of [Connection.events]. Use a `when` with an `else` branch: later SDKs add kinds. */
sealed interface Event {
    /**
     * A message of one of the user's threads, replayed, pushed, fetched to fill a gap, or sent
     * by this device (then [own] is true and [Message.getState] is SENT). Each `(thread, seq)`
     * comes once and in order per thread. Its [Message.getKind] may be `UNRECOGNIZED` when the
     * server is newer than this SDK (a kind added to the contracts later): show it as
     * unsupported ([MessageView.unsupported]), but it still counts as taken and moves the cursor.
     *
     * Reactions, edits and deletes are entries of the log too ([Fold.isEvent]): they come
     * here like messages (and are acked like them) but are never shown on their own. [view] is
     * the message the entry concerns as it stands now, folded ([Connection.fold]): the message
     * itself, or the target of an event — replace that row with it. It is null for an event
     * whose target this device has not seen (history before it paged in).
     */
    data class Received(val message: Message, val own: Boolean, val view: MessageView? = null) : Event

    /**
     * An entry of the user's own change log: a message hidden on one of the user's devices
     * (delete for me). [view] is that message, now [MessageView.hidden], if this device has it.
     * Taking it moves [Connection.userLogSeq].
     */
    data class UserChanged(val change: UserChange, val view: MessageView?) : Event

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
