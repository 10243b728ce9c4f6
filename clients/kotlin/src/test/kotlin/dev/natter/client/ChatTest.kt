// Two people chatting through the Kotlin SDK against a real natter server process.
package dev.natter.client

import dev.natter.v1.MessageKind
import dev.natter.v1.ReceiptKind
import kotlinx.coroutines.flow.filterIsInstance
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.assertThrows
import java.net.InetSocketAddress

@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(90)
class ChatTest {
    private val server = NatterServer()

    @BeforeAll
    fun up() {
        server.start()
    }

    @AfterAll
    fun down() = server.close()

    /** How far the server has stored [username]'s delivered cursor in a thread. */
    private suspend fun deliveredSeq(viewer: NatterClient, threadId: Long, username: String): Long =
        viewer.thread(threadId).membersList.firstOrNull { it.user.username == username }?.deliveredSeq ?: 0

    private suspend fun pair(): Pair<NatterClient, NatterClient> {
        val alice = newUser(server.address, "alice")
        val bob = newUser(server.address, "bob")
        alice.addContact(bob.username)
        bob.addContact(alice.username)
        return alice to bob
    }

    @Test
    fun `two people register, log in, add each other and chat both ways in real time`() = runBlocking {
        val (alice, bob) = pair()
        assertEquals(listOf(bob.username), alice.contacts().map { it.user.username })
        val ca = alice.connect().start()
        val cb = bob.connect().start()
        try {
            val sent = ca.send("hi bob", recipient = bob.username)
            val got = cb.received(1).single()
            assertEquals("hi bob", got.text)
            assertEquals(alice.username, got.sender.username)
            assertEquals(sent.seq, got.seq)
            assertEquals(sent.threadId, got.threadId)

            // bob took alice's message: delivered; bob reads the thread: read.
            ca.until { it is Event.ReceiptEvent && it.receipt.kind == ReceiptKind.RECEIPT_KIND_DELIVERED && it.receipt.seq >= sent.seq }
            cb.read(got.threadId, got.seq)
            ca.until { it is Event.ReceiptEvent && it.receipt.kind == ReceiptKind.RECEIPT_KIND_READ && it.receipt.seq >= sent.seq }

            assertTrue(cb.typing(got.threadId, true))
            val typing = ca.until { it is Event.TypingEvent }.last() as Event.TypingEvent
            assertEquals(bob.username, typing.typing.user.username)
            assertTrue(typing.typing.active)

            cb.send("hi alice", threadId = got.threadId)
            val back = ca.received(1).single()
            assertEquals("hi alice", back.text)
            assertEquals(bob.username, back.sender.username)

            // Presence by query, and the thread list with the last message.
            val presence = alice.presence(listOf(bob.username)).single()
            assertTrue(presence.online)
            val thread = alice.threads().single()
            assertEquals(got.threadId, thread.threadId)
            assertEquals("hi alice", thread.lastMessage.text)
            assertEquals(thread.threadId, alice.directThread(bob.username).threadId)
        } finally {
            ca.close()
            cb.close()
        }
        // bob's last device left: his contacts see him go offline.
        eventually(what = "bob offline") { !alice.presence(listOf(bob.username)).single().online }
        alice.close()
        bob.close()
    }

    @Test
    fun `an offline device gets everything on reconnect, once and in order`() = runBlocking {
        val (alice, bob) = pair()
        val ca = alice.connect().start()
        val first = bob.connect().start()
        val warm = ca.send("before", recipient = bob.username)
        assertEquals("before", first.received(1).single().text)
        val saved = first.cursors
        first.close()

        val n = 150
        val results = (0 until n).map { ca.post("m$it", threadId = warm.threadId) }.map { it.await() }
        assertEquals((warm.seq + 1..warm.seq + n).toList(), results.map { it.seq })

        // A new connection with the cursors the app saved: the replay is exactly what it missed.
        val again = bob.connect(ConnectionOptions(cursors = saved))
        val events = mutableListOf<Event>()
        again.start(waitSynced = false)
        events += again.until { it is Event.SyncDone }
        val replayed = events.filterIsInstance<Event.Received>().map { it.message }
        assertEquals((0 until n).map { "m$it" }, replayed.map { it.text })
        assertEquals((warm.seq + 1..warm.seq + n).toList(), replayed.map { it.seq })
        assertEquals(n.toLong(), (events.last() as Event.SyncDone).replayed)

        // And a connection without saved cursors starts from the server's cursor for the device
        // (stored when the stream ends: wait until it is).
        again.close()
        eventually(what = "bob's cursor stored") { deliveredSeq(alice, warm.threadId, bob.username) == warm.seq + n }
        val third = bob.connect()
        third.start(waitSynced = false)
        val none = third.until { it is Event.SyncDone }.filterIsInstance<Event.Received>()
        assertEquals(emptyList<Event.Received>(), none)
        third.close()
        ca.close()
        alice.close()
        bob.close()
    }

    @Test
    fun `messages the app never took are replayed on the next connect`() = runBlocking {
        val (alice, bob) = pair()
        val ca = alice.connect().start()
        val cb = bob.connect().start()
        val sends = (1..5).map { ca.post("n$it", recipient = bob.username) }.map { it.await() }
        // The app takes two messages from the flow, then goes away.
        val taken = cb.events.filterIsInstance<Event.Received>().take(2).toList()
        assertEquals(listOf("n1", "n2"), taken.map { it.message.text })
        eventually(what = "three more queued") { cb.queuedEvents >= 3 }
        assertEquals(sends[1].seq, cb.cursors[sends[0].threadId])
        cb.close()
        eventually(what = "bob's cursor stored") { deliveredSeq(alice, sends[0].threadId, bob.username) == sends[1].seq }

        val next = bob.connect()
        next.start(waitSynced = false)
        val replay = next.until { it is Event.SyncDone }.filterIsInstance<Event.Received>()
        assertEquals(listOf("n3", "n4", "n5"), replay.map { it.message.text })
        next.close()
        ca.close()
        alice.close()
        bob.close()
    }

    @Test
    fun `a send retried after a cut stream lands once`() = runBlocking {
        val (alice0, bob) = pair()
        TcpProxy(InetSocketAddress("127.0.0.1", server.port)).use { proxy ->
            // alice's device talks to the server through a proxy that can lose the answer.
            val alice = NatterClient(proxy.address, token = alice0.token)
            val ca = alice.connect().start()
            val cb = bob.connect().start()
            proxy.hold() // from here the server's frames to alice wait in the proxy
            val pending = ca.post("exactly once", recipient = bob.username, clientMsgId = "k-once")
            val stored = cb.received(1).single() // the server stored it and pushed it to bob
            assertEquals("exactly once", stored.text)
            assertFalse(pending.isCompleted) // alice never heard back ...
            proxy.cut() // ... and her stream is cut
            val result = pending.await() // the outbox sends k-once again on the next stream
            assertEquals(stored.seq, result.seq)
            assertEquals(stored.msgId, result.msgId)
            assertTrue(ca.stats.connects >= 2)
            assertTrue(ca.stats.resends >= 1)
            val rows = bob.history(stored.threadId).messages
            assertEquals(listOf("exactly once"), rows.map { it.text })
            assertEquals(listOf("k-once"), rows.map { it.clientMsgId })
            // bob got it once: nothing more arrives after a later message.
            ca.send("after", threadId = stored.threadId)
            assertEquals(listOf("after"), cb.received(1).map { it.text })
            ca.close()
            cb.close()
            alice.close()
        }
        alice0.close()
        bob.close()
    }

    @Test
    fun `history pages back, groups fan out, and the user's other devices see their own sends`() = runBlocking {
        val (alice, bob) = pair()
        val carol = newUser(server.address, "carol")
        val group = alice.createGroup("Weekend", listOf(bob.username, carol.username))
        val ca = alice.connect().start()
        val cb = bob.connect().start()
        val cc = carol.connect().start()
        val alice2 = alice.anotherDevice()
        val ca2 = alice2.connect().start()
        try {
            val n = 120
            val sent = (0 until n).map { ca.post("g$it", threadId = group.threadId) }.map { it.await() }
            for (c in listOf(cb, cc, ca2)) {
                assertEquals((0 until n).map { "g$it" }, c.received(n).map { it.text })
            }
            // Paging back from the newest: every message once, oldest first within a page.
            val seen = mutableListOf<Long>()
            var page = bob.history(group.threadId, limit = 50)
            while (true) {
                seen.addAll(0, page.messages.map { it.seq })
                if (!page.more) break
                page = bob.history(group.threadId, beforeSeq = page.messages.first().seq, limit = 50)
            }
            assertEquals((1..sent.last().seq).toList(), seen)
            val info = bob.thread(group.threadId)
            assertEquals(3, info.membersCount)

            carol.leaveGroup(group.threadId)
            alice.renameGroup(group.threadId, "Long weekend")
            val system = cb.until { it is Event.Received && it.message.kind == MessageKind.MESSAGE_KIND_SYSTEM && it.message.system.title == "Long weekend" }
            assertTrue(system.isNotEmpty())
        } finally {
            for (c in listOf(ca, cb, cc, ca2)) c.close()
        }
        for (c in listOf(alice, alice2, bob, carol)) c.close()
    }

    @Test
    fun `a bad token is a typed error, on calls and on the stream`() = runBlocking {
        val stranger = NatterClient(server.address, token = "not-a-token")
        val call = assertThrows<UnauthenticatedException> { runBlocking { stranger.contacts() } }
        assertEquals("BAD_TOKEN", call.reason)
        val conn = stranger.connect()
        val stream = assertThrows<UnauthenticatedException> { runBlocking { conn.start() } }
        assertEquals("BAD_TOKEN", stream.reason)
        assertEquals(ConnectionState.CLOSED, conn.state.value)
        val send = assertThrows<UnauthenticatedException> { runBlocking { conn.send("x", recipient = "nobody") } }
        assertEquals("BAD_TOKEN", send.reason)
        conn.close()
        stranger.close()

        // Other refusals carry their reasons too.
        val (alice, bob) = pair()
        val dup = assertThrows<AlreadyExistsException> { runBlocking { alice.register(bob.username, PASSWORD) } }
        assertTrue(dup.reason.isNotEmpty())
        val ca = alice.connect().start()
        val missing = assertThrows<NotFoundException> { runBlocking { ca.send("hello?", recipient = "no-such-user") } }
        assertEquals("USER_NOT_FOUND", missing.reason)
        // Logging out ends the stream for good.
        alice.logout()
        val end = ca.until { it is Event.Disconnected }.last() as Event.Disconnected
        assertTrue(end.final)
        assertEquals("DEVICE_LOGGED_OUT", end.error?.reason)
        ca.close()
        alice.close()
        bob.close()
    }
}
