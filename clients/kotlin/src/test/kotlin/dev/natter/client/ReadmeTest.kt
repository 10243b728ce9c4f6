// The README's Kotlin example, run against a real server (tests/test_clients.py checks the two agree).
package dev.natter.client

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout

@Timeout(60)
class ReadmeTest {
    /** The body of the README's `main`, with the server's address as a parameter. */
    private suspend fun readme(address: String) {
        val client = NatterClient(address) // ChannelFactory.tls() for a TLS server
        client.login("alice", "correct horse battery", deviceName = "phone")
        val conn = client.connect().start() // in sync: replay done, outbox sent
        val sent = conn.send("hi bob", recipient = "bob") // once stored; retried with the same id
        println("stored as #${sent.seq} of thread ${sent.threadId}")
        conn.close()
        client.close()
    }

    @Test
    fun `the README's example sends a message`() = runBlocking {
        NatterServer().use { server ->
            server.start()
            for (name in listOf("alice", "bob")) NatterClient(server.address).use { it.register(name, PASSWORD) }
            readme(server.address)
            val bob = NatterClient(server.address)
            bob.login("bob", PASSWORD)
            val conn = bob.connect()
            conn.start(waitSynced = false)
            assertEquals(listOf("hi bob"), conn.received(1).map { it.text })
            conn.close()
            bob.close()
        }
    }
}
