// Blocking, reports and device control through the Kotlin SDK against a real natter server.
package dev.natter.client

import dev.natter.v1.ReportReason
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.Timeout

@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(90)
class SafetyTest {
    private val server = NatterServer()

    @BeforeAll
    fun up() {
        server.start()
    }

    @AfterAll
    fun down() = server.close()

    private suspend fun failure(block: suspend () -> Unit): NatterException {
        try {
            block()
        } catch (e: NatterException) {
            return e
        }
        throw AssertionError("expected a NatterException")
    }

    @Test
    fun `a blocked user's send is refused with the documented reason, a report reaches the server, unblock lets it through`() = runBlocking {
        val alice = newUser(server.address, "alice")
        val bob = newUser(server.address, "bob")
        alice.addContact(bob.username)
        bob.addContact(alice.username)
        val ca = alice.connect().start()
        val cb = bob.connect().start()
        try {
            val first = cb.send("hi alice", recipient = alice.username)
            assertEquals("hi alice", ca.received(1).single().text)
            // A profile: the about line a chat partner sees in the thread list.
            bob.updateSettings(about = "at the lake")
            assertEquals("at the lake", alice.threads().single { it.threadId == first.threadId }.peer.about)

            assertEquals(bob.username, alice.block(bob.username).username)
            alice.block(bob.username) // twice is fine
            assertEquals(listOf(bob.username), alice.blocked().map { it.username })
            val refused = failure { cb.send("are you there?", threadId = first.threadId) }
            assertTrue(refused is PermissionDeniedException, refused.toString())
            assertEquals("RECIPIENT_UNAVAILABLE", refused.reason)
            assertEquals(emptyList<PendingSend>(), cb.pendingSends()) // a verdict: not retried
            val id = alice.report(ReportReason.REPORT_REASON_HARASSMENT, threadId = first.threadId, seqs = listOf(first.seq), text = "keeps writing")
            assertTrue(id > 0)

            alice.unblock(bob.username)
            assertEquals(emptyList<String>(), alice.blocked().map { it.username })
            val after = cb.send("sorry", threadId = first.threadId)
            assertEquals(first.seq + 1, after.seq) // the refused send took no seq
            assertEquals("sorry", ca.received(1).single().text)
        } finally {
            ca.close()
            cb.close()
            alice.close()
            bob.close()
        }
    }

    @Test
    fun `logging out another device closes its stream, and a password change logs out the rest`() = runBlocking {
        val laptop = newUser(server.address, "carol", device = "laptop")
        val phone = NatterClient(server.address)
        phone.login(laptop.username, PASSWORD, deviceName = "phone", platform = "android")
        val cp = phone.connect().start()
        try {
            val devices = laptop.devices()
            assertEquals(listOf("laptop", "phone"), devices.map { it.name })
            assertEquals(listOf(true, false), devices.map { it.current })
            assertEquals("android", devices[1].platform)

            laptop.revokeDevice(phone.deviceId)
            val end = cp.until { it is Event.Disconnected }.last() as Event.Disconnected
            assertTrue(end.final)
            assertTrue(end.error is UnauthenticatedException, end.error.toString())
            assertEquals(ConnectionState.CLOSED, cp.state.value)
            assertEquals(listOf("laptop"), laptop.devices().map { it.name })

            val tablet = NatterClient(server.address)
            tablet.login(laptop.username, PASSWORD, deviceName = "tablet")
            val ct = tablet.connect().start()
            assertEquals(listOf(tablet.deviceId), laptop.changePassword(PASSWORD, "a new password 42"))
            assertTrue((ct.until { it is Event.Disconnected }.last() as Event.Disconnected).final)
            val stale = failure { NatterClient(server.address).use { it.login(laptop.username, PASSWORD) } }
            assertTrue(stale is UnauthenticatedException, stale.toString())
            laptop.me() // this device stays logged in

            val other = NatterClient(server.address)
            other.login(laptop.username, "a new password 42", deviceName = "other")
            assertEquals(listOf(other.deviceId), laptop.revokeOtherDevices())
            ct.close()
            tablet.close()
            other.close()
        } finally {
            cp.close()
            phone.close()
            laptop.close()
        }
    }
}
