// Client-side ordering: each message surfaces once, in seq order per thread, gaps detected.
package dev.natter.client

import dev.natter.v1.Message

/** Messages after [afterSeq] and before [beforeSeq] of a thread are missing and must be fetched. */
data class Gap(val threadId: Long, val afterSeq: Long, val beforeSeq: Long)

/**
 * Feed it every message from pushes, replays and history: it releases each `(thread, seq)`
 * exactly once, in seq order per thread, and says which gap to fill when one shows. A message
 * of a kind this SDK does not know is ordered like any other: every entry of a thread's log
 * has a seq, and skipping one would look like a gap for ever.
 */
class Merger(initial: Map<Long, Long> = emptyMap()) {
    private val last = HashMap(initial)
    private val held = HashMap<Long, java.util.TreeMap<Long, Message>>()

    /** Per thread, the last seq released. */
    val cursors: Map<Long, Long> get() = HashMap(last)

    fun cursor(threadId: Long): Long? = last[threadId]

    /** The messages now released (in order), and the gap to fill before the rest can be. */
    fun offer(m: Message): Pair<List<Message>, Gap?> {
        val cursor = last.getOrPut(m.threadId) { m.seq - 1 } // first sight: the server chose the start
        if (m.seq <= cursor) return emptyList<Message>() to null
        if (m.seq > cursor + 1) {
            held.getOrPut(m.threadId) { java.util.TreeMap() }[m.seq] = m
            return emptyList<Message>() to Gap(m.threadId, cursor, m.seq)
        }
        return release(m) to null
    }

    private fun release(m: Message): List<Message> {
        val out = mutableListOf(m)
        var cursor = m.seq
        val waiting = held[m.threadId]
        if (waiting != null) {
            while (true) {
                val next = waiting.remove(cursor + 1) ?: break
                out.add(next)
                cursor = next.seq
            }
            waiting.headMap(cursor, true).clear()
            if (waiting.isEmpty()) held.remove(m.threadId)
        }
        last[m.threadId] = cursor
        return out
    }

    /** Seqs up to [seq] will never come (not visible to this member): move past them. */
    fun skipTo(threadId: Long, seq: Long): List<Message> {
        if (seq <= (last[threadId] ?: 0)) return emptyList()
        last[threadId] = seq
        val waiting = held[threadId] ?: return emptyList()
        waiting.headMap(seq, true).clear()
        val next = waiting.remove(seq + 1)
        if (waiting.isEmpty()) held.remove(threadId)
        return if (next != null) release(next) else emptyList()
    }

    fun pendingGap(threadId: Long): Gap? {
        val waiting = held[threadId]
        if (waiting.isNullOrEmpty()) return null
        return Gap(threadId, last[threadId] ?: 0, waiting.firstKey())
    }
}
