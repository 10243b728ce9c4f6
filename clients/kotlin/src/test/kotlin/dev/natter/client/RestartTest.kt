// The server is killed (kill -9) and started again in the middle of a burst: nothing lost, nothing twice.
package dev.natter.client

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout

@Timeout(120)
class RestartTest {
    @Test
    fun `a server restart mid-burst loses nothing and duplicates nothing`() = runBlocking {
        NatterServer().use { server ->
            server.start()
            val alice = newUser(server.address, "alice")
            val bob = newUser(server.address, "bob")
            val ca = alice.connect(ConnectionOptions(maxBackoffMillis = 500)).start()
            val cb = bob.connect(ConnectionOptions(maxBackoffMillis = 500)).start()
            val warm = ca.send("warm-up", recipient = bob.username)
            assertEquals("warm-up", cb.received(1).single().text)

            val n = 400
            val sends = (0 until n).map { ca.post("b$it", threadId = warm.threadId) }
            eventually(what = "a quarter acknowledged") { sends.count { it.isCompleted } >= n / 4 }
            server.kill()
            val acknowledgedBefore = sends.count { it.isCompleted }
            server.start() // same port, same data
            val results = sends.map { it.await() }

            // Every send resolved once, in the order it was posted (per-device FIFO).
            assertEquals((warm.seq + 1..warm.seq + n).toList(), results.map { it.seq })
            // bob, connected throughout (reconnecting), sees each message once and in order.
            val got = cb.received(n, timeoutMillis = 60_000)
            assertEquals((0 until n).map { "b$it" }, got.map { it.text })
            assertEquals(results.map { it.seq }, got.map { it.seq })
            // The store holds each message once.
            val rows = bob.history(warm.threadId, limit = 1000, forward = true).messages
            assertEquals(listOf("warm-up") + (0 until n).map { "b$it" }, rows.map { it.text })
            assertTrue(acknowledgedBefore < n, "the kill came mid-burst")
            assertTrue(ca.stats.connects >= 2 && cb.stats.connects >= 2)
            ca.close()
            cb.close()
            alice.close()
            bob.close()
        }
    }
}
