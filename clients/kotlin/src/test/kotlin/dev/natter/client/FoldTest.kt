// Rich messages through the Kotlin SDK against a real natter server: replies, reactions, edits,
// deletes, forwards and delete-for-me, folded the same on every device; and the fold alone.
package dev.natter.client

import dev.natter.v1.Message
import dev.natter.v1.MessageKind
import dev.natter.v1.Reaction
import dev.natter.v1.User
import dev.natter.v1.UserChange
import dev.natter.v1.UserChangeKind
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.Timeout

/** What a person sees of a message: enough to compare two devices' folds. */
data class Shown(
    val seq: Long,
    val kind: MessageKind,
    val text: String,
    val edited: Boolean,
    val deleted: Boolean,
    val counts: Map<String, Int>,
    val replyToSeq: Long?,
    val forwarded: Boolean,
)

fun Fold.shown(threadId: Long): List<Shown> = thread(threadId).map {
    Shown(it.seq, it.kind, it.text, it.edited, it.deleted, it.counts, it.replyTo?.seq, it.forwarded)
}

@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(120)
class FoldTest {
    private val server = NatterServer()

    @BeforeAll
    fun up() {
        server.start()
    }

    @AfterAll
    fun down() = server.close()

    private suspend fun pair(): Pair<NatterClient, NatterClient> {
        val alice = newUser(server.address, "alice")
        val bob = newUser(server.address, "bob")
        alice.addContact(bob.username)
        bob.addContact(alice.username)
        return alice to bob
    }

    @Test
    fun `reactions, edits, deletes, replies and forwards fold the same on every device, also one offline through them`() = runBlocking {
        val (alice, bob) = pair()
        val bobPhone = bob.anotherDevice(device = "phone")
        val bobTablet = bob.anotherDevice(device = "tablet")
        val ca = alice.connect().start()
        val cb = bob.connect().start()
        // bob's phone is online for the first message only, then offline through everything else.
        val phoneFold = Fold()
        val phone = bobPhone.connect(ConnectionOptions(fold = phoneFold)).start()
        try {
            val hello = ca.send("hello bob", recipient = bob.username)
            val t = hello.threadId
            phone.received(1)
            phone.close()
            val saved = phone.cursors
            assertEquals(mapOf(t to hello.seq), saved)

            val typo = ca.send("a message with a tpyo", threadId = t)
            val regret = ca.send("something to take back", threadId = t)
            cb.received(3)
            val reply = cb.send("hi alice", threadId = t, replyToSeq = hello.seq)
            assertEquals("hello bob", reply.message.replyTo.snippet)
            cb.react(t, hello.seq, "👍")
            ca.react(t, hello.seq, "👍")
            cb.react(t, hello.seq, "😂") // bob changes his: one reaction per person
            ca.react(t, reply.seq, "❤️")
            ca.react(t, reply.seq, "") // and alice takes hers back
            val edit = ca.edit(t, typo.seq, "a message with a typo")
            ca.delete(t, regret.seq)
            val fwd = cb.forward(t, hello.seq, threadId = t)

            val expected = listOf(
                Shown(hello.seq, MessageKind.MESSAGE_KIND_TEXT, "hello bob", false, false, mapOf("👍" to 1, "😂" to 1), null, false),
                Shown(typo.seq, MessageKind.MESSAGE_KIND_TEXT, "a message with a typo", true, false, emptyMap(), null, false),
                Shown(regret.seq, MessageKind.MESSAGE_KIND_TEXT, "", false, true, emptyMap(), null, false),
                Shown(reply.seq, MessageKind.MESSAGE_KIND_TEXT, "hi alice", false, false, emptyMap(), hello.seq, false),
                Shown(fwd.seq, MessageKind.MESSAGE_KIND_TEXT, "hello bob", false, false, emptyMap(), null, true),
            )
            // Events are entries with seqs of their own, never shown on their own.
            assertEquals(fwd.seq, reply.seq + 8)
            assertEquals(edit.seq, reply.seq + 6)

            // bob's other online device folds what it receives (its own sends come back as SENT).
            val taken = cb.until { it is Event.Received && it.message.seq == fwd.seq }.filterIsInstance<Event.Received>()
            val deleteEvent = taken.single { it.message.kind == MessageKind.MESSAGE_KIND_DELETE }
            assertEquals(regret.seq, deleteEvent.view!!.seq)
            assertTrue(deleteEvent.view!!.deleted)
            val editEvent = taken.single { it.message.kind == MessageKind.MESSAGE_KIND_EDIT }
            assertEquals("a message with a typo", editEvent.view!!.text)
            assertEquals(expected, cb.fold.shown(t))
            eventually(what = "alice's own fold") { ca.fold.shown(t) == expected }

            // The phone comes back with its saved cursors and fold: only the rest is replayed.
            val back = bobPhone.connect(ConnectionOptions(cursors = saved, fold = phoneFold)).start()
            back.until { it is Event.Received && it.message.seq == fwd.seq }
            assertEquals(expected, phoneFold.shown(t))
            back.close()

            // A device that never connected gets the thread folded too (replayed folded, and the events).
            val tablet = bobTablet.connect().start()
            eventually(what = "the tablet caught up") { tablet.fold.shown(t) == expected }
            tablet.close()
        } finally {
            ca.close()
            cb.close()
            for (c in listOf(alice, bob, bobPhone, bobTablet)) c.close()
        }
    }

    @Test
    fun `delete for me hides the message on the same user's other devices only`() = runBlocking {
        val (alice, bob) = pair()
        val bobPhone = bob.anotherDevice(device = "phone")
        val ca = alice.connect().start()
        val cb = bob.connect().start()
        val phone = bobPhone.connect().start()
        try {
            val secret = ca.send("delete this for me", recipient = bob.username)
            val keep = ca.send("keep this", threadId = secret.threadId)
            val t = secret.threadId
            phone.received(2)
            cb.received(2)

            val changes = bob.hide(t, listOf(secret.seq))
            assertEquals(secret.seq, changes.single().message.seq)

            val changed = phone.until { it is Event.UserChanged }.last() as Event.UserChanged
            assertEquals(UserChangeKind.USER_CHANGE_KIND_HIDE_MESSAGE, changed.change.kind)
            assertTrue(changed.view!!.hidden)
            assertEquals("", changed.view!!.text)
            assertEquals(listOf(keep.seq), phone.fold.thread(t).map { it.seq })
            assertEquals(changes.single().seq, phone.userLogSeq)
            cb.until { it is Event.UserChanged } // the device that hid it hears it too
            assertEquals(listOf(keep.seq), cb.fold.thread(t).map { it.seq })

            // Nothing changes for alice: no event in the thread, no gap.
            assertEquals(listOf(secret.seq, keep.seq), ca.fold.thread(t).map { it.seq })
            assertFalse(ca.fold.view(t, secret.seq)!!.hidden)
            assertEquals(keep.seq, alice.history(t).messages.last().seq)

            // A device of bob that connects later has it hidden from the start; a saved
            // userLogSeq is not replayed again.
            val later = bob.anotherDevice(device = "later")
            val cl = later.connect().start()
            eventually(what = "the later device's thread") { cl.fold.thread(t).map { it.seq } == listOf(keep.seq) }
            cl.close()
            phone.close()
            val again = bobPhone.connect(ConnectionOptions(cursors = phone.cursors, userLogSeq = phone.userLogSeq)).start()
            assertNull(again.until { it is Event.SyncDone }.firstOrNull { it is Event.UserChanged })
            again.close()
            later.close()
        } finally {
            ca.close()
            cb.close()
            phone.close()
            for (c in listOf(alice, bob, bobPhone)) c.close()
        }
    }

    @Test
    fun `an attachment uploads in chunks, resumes after a lost reply, and reaches the other side with its metadata`() = runBlocking {
        val (alice, bob) = pair()
        val outsider = newUser(server.address, "eve")
        val data = ByteArray(300_000).also { java.util.Random(1).nextBytes(it) }
        var patches = 0
        var heads = 0
        // The second chunk reaches the server but its answer is lost, as on a broken connection.
        val flaky = HttpTransport { method, url, headers, body ->
            val reply = JdkHttp.exchange(method, url, headers, body)
            if (method == "HEAD") heads += 1
            if (method == "PATCH" && ++patches == 2) throw java.io.IOException("connection reset")
            reply
        }
        val a = alice.upload(data, "notes.bin", "application/octet-stream", http = flaky, chunkBytes = 64 * 1024)
        assertEquals(5, patches) // 300,000 bytes in 64 KiB chunks: none sent twice
        assertEquals(1, heads) // the server said where to go on
        assertEquals(300_000L, a.size)
        assertEquals("notes.bin", a.name)

        val ca = alice.connect().start()
        val cb = bob.connect().start()
        try {
            ca.send("the notes", recipient = bob.username, attachmentIds = listOf(a.attachmentId))
            val got = cb.until { it is Event.Received && it.message.kind == MessageKind.MESSAGE_KIND_ATTACHMENT }.last() as Event.Received
            assertEquals(listOf(a.attachmentId), got.view!!.attachments.map { it.attachmentId })
            assertEquals(300_000L, got.view!!.attachments.single().size)
            assertEquals("the notes", got.view!!.text)
            org.junit.jupiter.api.Assertions.assertArrayEquals(data, bob.download(a.attachmentId, JdkHttp))

            val denied = try {
                outsider.download(a.attachmentId, JdkHttp)
                null
            } catch (e: NatterException) {
                e
            }
            assertTrue(denied is PermissionDeniedException, denied.toString())
            val empty = try {
                alice.upload(ByteArray(0), "empty.txt", http = JdkHttp)
                null
            } catch (e: NatterException) {
                e
            }
            assertEquals("EMPTY_FILE", empty?.reason)
        } finally {
            ca.close()
            cb.close()
            for (c in listOf(alice, bob, outsider)) c.close()
        }
    }

    private val ann = User.newBuilder().setUserId(1).setUsername("ann").build()
    private val ben = User.newBuilder().setUserId(2).setUsername("ben").build()

    private fun entry(seq: Long, kind: MessageKind, sender: User = ann, target: Long = 0, text: String = "", emoji: String = "") =
        Message.newBuilder().setThreadId(5).setSeq(seq).setSender(sender).setKind(kind)
            .setTargetSeq(target).setText(text).setEmoji(emoji).build()

    @Test
    fun `the fold gives the same view whatever the order entries arrive in, and twice is once`() {
        val log = listOf(
            entry(1, MessageKind.MESSAGE_KIND_TEXT, text = "first"),
            entry(2, MessageKind.MESSAGE_KIND_TEXT, text = "second"),
            entry(3, MessageKind.MESSAGE_KIND_REACTION, ben, target = 1, emoji = "👍"),
            entry(4, MessageKind.MESSAGE_KIND_EDIT, target = 1, text = "first, edited"),
            entry(5, MessageKind.MESSAGE_KIND_REACTION, ben, target = 1, emoji = "🎉"),
            entry(6, MessageKind.MESSAGE_KIND_EDIT, target = 1, text = "first, edited twice"),
            entry(7, MessageKind.MESSAGE_KIND_REACTION, ann, target = 1, emoji = "🎉"),
            entry(8, MessageKind.MESSAGE_KIND_DELETE, target = 2),
        )
        // What the server returns for seq 1 once folded (a history page fetched later).
        val folded = log[0].toBuilder().setText("first, edited twice").setEditSeq(6)
            .addReactions(Reaction.newBuilder().setUser(ben).setEmoji("🎉").setSeq(5))
            .addReactions(Reaction.newBuilder().setUser(ann).setEmoji("🎉").setSeq(7)).build()
        val expected = listOf(
            Shown(1, MessageKind.MESSAGE_KIND_TEXT, "first, edited twice", true, false, mapOf("🎉" to 2), null, false),
            Shown(2, MessageKind.MESSAGE_KIND_TEXT, "", false, true, emptyMap(), null, false),
        )
        val rnd = java.util.Random(7)
        repeat(50) {
            val fold = Fold()
            val feed = (log + log + listOf(folded)).shuffled(rnd)
            for (m in feed) fold.apply(m)
            assertEquals(expected, fold.shown(5), "order ${feed.map { it.seq }}")
        }
        // An event before its target: no view until the target arrives.
        val fold = Fold()
        assertEquals(5L to 1L, fold.apply(log[3]))
        assertNull(fold.view(5, 1))
        fold.apply(log[0])
        assertEquals("first, edited", fold.view(5, 1)!!.text)
        // A user-log kind this SDK does not know changes nothing.
        assertNull(fold.change(UserChange.newBuilder().setSeq(1).setKindValue(9).build()))
        assertNotNull(fold.view(5, 1))
    }
}
