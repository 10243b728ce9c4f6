// Folding a thread's log into what people see: edits, deletes and reactions onto their messages.
package dev.natter.client

import com.google.protobuf.Timestamp
import dev.natter.v1.Attachment
import dev.natter.v1.Message
import dev.natter.v1.MessageKind
import dev.natter.v1.ReplyTo
import dev.natter.v1.User
import dev.natter.v1.UserChange
import dev.natter.v1.UserChangeKind

/**
 * A message as it stands now, for display: [text] after the latest edit ([edited]), blank
 * when [deleted] for everyone or [hidden] by this user (delete for me), and every member's
 * current reaction. [unsupported] marks a kind this SDK does not know (a newer server): show
 * "unsupported message — update the app".
 */
data class MessageView(
    val message: Message,
    val text: String,
    val attachments: List<Attachment>,
    val edited: Boolean,
    val editTime: Timestamp?,
    val deleted: Boolean,
    val hidden: Boolean,
    /** Per user id: who reacted, and with which emoji. */
    val reactions: Map<Long, Pair<User, String>>,
) {
    val threadId: Long get() = message.threadId
    val seq: Long get() = message.seq
    val kind: MessageKind get() = message.kind
    val sender: User get() = message.sender

    /** The quoted message, as it was when this one was sent; null when not a reply. */
    val replyTo: ReplyTo? get() = if (message.hasReplyTo()) message.replyTo else null
    val forwarded: Boolean get() = message.forwarded
    val unsupported: Boolean get() = !Fold.isKnownContent(message.kind)

    /** How many members reacted with each emoji, most first. */
    val counts: Map<String, Int>
        get() = reactions.values.groupingBy { it.second }.eachCount()
            .entries.sortedByDescending { it.value }.associate { it.key to it.value }
}

/**
 * The folded state of every thread a device has seen: feed it every entry of the threads' logs
 * ([apply]) and of the user's own change log ([change]). History pages and replays can bring a
 * message after the events that changed it, or already folded by the server together with
 * those events, so the fold does not depend on arrival order: each change carries the seq of
 * the event that made it and the newest wins (an edit with a higher seq than the text's, one
 * reaction per member, a delete for good). Feeding the same entry twice, or in any order,
 * gives the same view. `natter/sdk/fold.py` is the reference; thread-safe.
 */
class Fold {
    private class Entry {
        var base: Message? = null
        var editSeq = 0L
        var editText = ""
        var editTime: Timestamp? = null
        var edits = false
        var deleted = false
        var hidden = false
        val reactions = HashMap<Long, Triple<Long, User, String>>() // by user id: (seq, user, emoji)
    }

    private val entries = java.util.TreeMap<Pair<Long, Long>, Entry>(compareBy<Pair<Long, Long>> { it.first }.thenBy { it.second })

    private fun entry(threadId: Long, seq: Long): Entry = entries.getOrPut(threadId to seq) { Entry() }

    /** Takes one entry of a thread's log; returns the `(thread, seq)` whose view it changed. */
    @Synchronized
    fun apply(m: Message): Pair<Long, Long> {
        if (isEvent(m.kind)) {
            val e = entry(m.threadId, m.targetSeq)
            when (m.kind) {
                MessageKind.MESSAGE_KIND_EDIT -> if (!e.edits || m.seq > e.editSeq) {
                    e.edits = true
                    e.editSeq = m.seq
                    e.editText = m.text
                    e.editTime = if (m.hasCreateTime()) m.createTime else null
                }
                MessageKind.MESSAGE_KIND_DELETE -> e.deleted = true
                else -> react(e, m.sender, m.emoji, m.seq)
            }
            return m.threadId to m.targetSeq
        }
        val e = entry(m.threadId, m.seq)
        val old = e.base
        if (old == null || fresher(m, old)) e.base = m
        if (m.editSeq > 0 && (!e.edits || m.editSeq > e.editSeq)) {
            e.edits = true
            e.editSeq = m.editSeq
            e.editText = m.text
            e.editTime = if (m.hasEditTime()) m.editTime else null
        }
        e.deleted = e.deleted || m.deleted
        e.hidden = e.hidden || m.hidden
        for (r in m.reactionsList) react(e, r.user, r.emoji, r.seq)
        return m.threadId to m.seq
    }

    /** Takes an entry of the user's own change log (delete for me); null for a kind not known. */
    @Synchronized
    fun change(c: UserChange): Pair<Long, Long>? {
        if (c.kind != UserChangeKind.USER_CHANGE_KIND_HIDE_MESSAGE) return null
        entry(c.message.threadId, c.message.seq).hidden = true
        return c.message.threadId to c.message.seq
    }

    /** A message as it stands now; null until the message itself has arrived. */
    @Synchronized
    fun view(threadId: Long, seq: Long): MessageView? {
        val e = entries[threadId to seq] ?: return null
        val base = e.base ?: return null
        var text = base.text
        var editTime: Timestamp? = if (base.hasEditTime()) base.editTime else null
        if (e.edits && e.editSeq >= base.editSeq) {
            text = e.editText
            editTime = e.editTime
        }
        val edited = e.edits || base.editSeq > 0
        if (e.deleted || e.hidden) return MessageView(base, "", emptyList(), edited, editTime, e.deleted, e.hidden, emptyMap())
        val reactions = e.reactions.filterValues { it.third.isNotEmpty() }.mapValues { it.value.second to it.value.third }
        return MessageView(base, text, base.attachmentsList, edited, editTime, false, false, reactions)
    }

    /** A thread's messages as they stand, in seq order (hidden ones left out). */
    @Synchronized
    fun thread(threadId: Long): List<MessageView> =
        entries.subMap(threadId to Long.MIN_VALUE, true, threadId to Long.MAX_VALUE, true).keys
            .mapNotNull { (t, s) -> view(t, s) }.filter { !it.hidden }

    private fun react(e: Entry, user: User, emoji: String, seq: Long) {
        val have = e.reactions[user.userId]
        if (have == null || seq > have.first) e.reactions[user.userId] = Triple(seq, user, emoji)
    }

    companion object {
        /** Reactions, edits and deletes: entries that change another, never shown on their own. */
        fun isEvent(kind: MessageKind): Boolean = kind == MessageKind.MESSAGE_KIND_REACTION ||
            kind == MessageKind.MESSAGE_KIND_EDIT || kind == MessageKind.MESSAGE_KIND_DELETE

        /** Kinds this SDK shows as messages; anything else (a newer server's) is unsupported. */
        internal fun isKnownContent(kind: MessageKind): Boolean = kind == MessageKind.MESSAGE_KIND_TEXT ||
            kind == MessageKind.MESSAGE_KIND_SYSTEM || kind == MessageKind.MESSAGE_KIND_ATTACHMENT

        /** Of two copies of one message, the one folded later (or the newcomer on a tie). */
        private fun fresher(new: Message, old: Message): Boolean =
            compareValuesBy(new, old, { it.editSeq }, { it.deleteSeq }, { it.reactionsCount }) >= 0
    }
}
