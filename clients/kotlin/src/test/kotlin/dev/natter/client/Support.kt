// Test support: a real `natter serve` process, a TCP proxy that cuts streams, waiting on conditions.
package dev.natter.client

import dev.natter.v1.Message
import dev.natter.v1.MessageKind
import kotlinx.coroutines.delay
import java.io.InputStream
import java.io.OutputStream
import java.net.InetAddress
import java.net.InetSocketAddress
import java.net.ServerSocket
import java.net.Socket
import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import java.util.concurrent.locks.ReentrantLock
import kotlin.concurrent.withLock
import kotlin.concurrent.thread

const val PASSWORD = "correct horse battery"

/**
 * `natter serve` (embedded: every service in one process, SQLite in a temporary folder) as a
 * child process. [start] picks a free port the first time (the server binds port 0 and logs
 * the port it got) and keeps it, so [kill] (SIGKILL) and [start] again is a restart on the
 * same address and data.
 */
class NatterServer(private val extraEnv: Map<String, String> = emptyMap()) : AutoCloseable {
    val dataDir: Path = Files.createTempDirectory("natter-kotlin-")
    private val log: Path = dataDir.resolve("server.log")
    private var process: Process? = null
    var port = 0
        private set
    val address: String get() = "127.0.0.1:$port"

    fun start(timeoutMillis: Long = 60_000): NatterServer {
        check(process?.isAlive != true) { "already running" }
        val bin = System.getProperty("natter.bin") ?: "../../.venv/bin/natter"
        check(Files.isExecutable(Path.of(bin))) { "no natter at $bin: run scripts/install first" }
        val from = if (Files.exists(log)) Files.size(log) else 0L
        val pb = ProcessBuilder(
            bin, "serve",
            "--data", dataDir.resolve("data").toString(),
            "--grpc", "127.0.0.1:$port",
            "--http", "127.0.0.1:0",
        )
        val env = pb.environment()
        env.keys.removeIf { it.startsWith("NATTER_") }
        env.putAll(
            mapOf(
                // Cheap password hashing and quick ack flushes: this server is for tests only.
                "NATTER_ARGON2_MEMORY_KIB" to "1024",
                "NATTER_ARGON2_TIME_COST" to "1",
                "NATTER_ACK_FLUSH_SECONDS" to "0.05",
                "NATTER_LOG_LEVEL" to "INFO",
                // Every test registers and logs in from loopback: no per-address limits (as
                // tests/procs.py), no canary user.
                "NATTER_LOGINS_PER_IP_PER_MINUTE" to "0",
                "NATTER_REGISTRATIONS_PER_IP_PER_HOUR" to "0",
                "NATTER_REGISTRATIONS_PER_HOUR" to "0",
                "NATTER_MAX_DEVICES_PER_USER" to "1000",
                "NATTER_CANARY_INTERVAL_SECONDS" to "0",
            ) + extraEnv,
        )
        pb.redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.appendTo(log.toFile()))
        val p = pb.start()
        process = p
        val serving = Regex("serving gRPC on [^ ]+:(\\d+) ")
        val deadline = System.nanoTime() + timeoutMillis * 1_000_000
        while (true) {
            val text = if (Files.exists(log)) Files.readString(log).substring(from.toInt()) else ""
            val found = serving.find(text)
            if (found != null) {
                port = found.groupValues[1].toInt()
                return this
            }
            check(p.isAlive) { "natter serve exited with ${p.exitValue()}:\n${tail()}" }
            check(System.nanoTime() < deadline) { "natter serve did not start in $timeoutMillis ms:\n${tail()}" }
            p.waitFor(50, TimeUnit.MILLISECONDS)
        }
    }

    /** kill -9: no shutdown, nothing flushed beyond what was committed. */
    fun kill() {
        process?.let {
            it.destroyForcibly()
            it.waitFor(10, TimeUnit.SECONDS)
        }
    }

    fun tail(lines: Int = 30): String =
        if (Files.exists(log)) Files.readAllLines(log).takeLast(lines).joinToString("\n") else "(no log)"

    override fun close() {
        process?.let {
            it.destroy() // SIGTERM: a clean stop
            if (!it.waitFor(10, TimeUnit.SECONDS)) it.destroyForcibly()
        }
        dataDir.toFile().deleteRecursively()
    }
}

private val serial = AtomicInteger()

/** A username no other test uses: 3-32 of a-z, 0-9, '-'. */
fun uniqueName(base: String): String = "$base-${serial.incrementAndGet()}"

/** Registers a user and logs in as one device; the client is authenticated as that device. */
suspend fun newUser(address: String, base: String, device: String = "junit"): NatterClient {
    val name = uniqueName(base)
    val client = NatterClient(address)
    client.register(name, PASSWORD, displayName = base.replaceFirstChar { it.uppercase() })
    client.login(name, PASSWORD, device)
    return client
}

/** Another device (a second login) of the same user. */
suspend fun NatterClient.anotherDevice(address: String = server, device: String = "second"): NatterClient {
    val other = NatterClient(address)
    other.login(user!!.username, PASSWORD, device)
    return other
}

val NatterClient.username: String get() = user!!.username

/** Waits for a condition, polling, never longer than [timeoutMillis]. */
suspend fun eventually(timeoutMillis: Long = 15_000, what: String = "condition", check: suspend () -> Boolean) {
    val deadline = System.nanoTime() + timeoutMillis * 1_000_000
    while (!check()) {
        if (System.nanoTime() > deadline) throw AssertionError("$what not met within $timeoutMillis ms")
        delay(20)
    }
}

/** Events up to and including the first that matches. */
suspend fun Connection.until(timeoutMillis: Long = 15_000, match: (Event) -> Boolean): List<Event> {
    val seen = mutableListOf<Event>()
    val deadline = System.nanoTime() + timeoutMillis * 1_000_000
    while (true) {
        val left = (deadline - System.nanoTime()) / 1_000_000
        if (left <= 0) throw AssertionError("no matching event within $timeoutMillis ms; saw ${seen.takeLast(5)}")
        val ev = nextEvent(left) ?: continue
        seen.add(ev)
        if (match(ev)) return seen
    }
}

/** The next [n] text messages from other devices (other events are taken and skipped). */
suspend fun Connection.received(n: Int, timeoutMillis: Long = 20_000): List<Message> {
    val out = mutableListOf<Message>()
    if (n == 0) return out
    until(timeoutMillis) { ev ->
        if (ev is Event.Received && !ev.own && ev.message.kind == MessageKind.MESSAGE_KIND_TEXT) out.add(ev.message)
        out.size >= n
    }
    return out
}

/**
 * A TCP proxy on loopback between a client and the server: [hold] stops bytes from the
 * server reaching the client (they wait in the proxy), [cut] closes every connection at once,
 * as a network failure would.
 */
class TcpProxy(private val target: InetSocketAddress) : AutoCloseable {
    private val listener = ServerSocket(0, 50, InetAddress.getLoopbackAddress())
    private val sockets = CopyOnWriteArrayList<Socket>()
    private val lock = ReentrantLock()
    private val released = lock.newCondition()
    @Volatile private var holding = false
    @Volatile private var closed = false
    val address: String get() = "127.0.0.1:${listener.localPort}"

    init {
        thread(isDaemon = true, name = "proxy-accept") {
            while (!closed) {
                val down = try { listener.accept() } catch (_: Exception) { break }
                val up = try {
                    Socket(target.address, target.port)
                } catch (_: Exception) {
                    down.close()
                    continue
                }
                sockets += down
                sockets += up
                pump(down.getInputStream(), up.getOutputStream(), gated = false)
                pump(up.getInputStream(), down.getOutputStream(), gated = true)
            }
        }
    }

    private fun pump(from: InputStream, to: OutputStream, gated: Boolean) = thread(isDaemon = true, name = "proxy-pump") {
        val buf = ByteArray(64 * 1024)
        try {
            while (true) {
                val n = from.read(buf)
                if (n < 0) break
                if (gated) lock.withLock { while (holding && !closed) released.await() }
                to.write(buf, 0, n)
                to.flush()
            }
        } catch (_: Exception) {
            // the connection was cut
        } finally {
            runCatching { from.close() }
            runCatching { to.close() }
        }
    }

    fun hold() {
        holding = true
    }

    fun release() = lock.withLock {
        holding = false
        released.signalAll()
    }

    /** Closes every proxied connection (new ones are still accepted). */
    fun cut() {
        for (s in sockets) runCatching { s.close() }
        sockets.clear()
        release()
    }

    override fun close() {
        closed = true
        runCatching { listener.close() }
        cut()
    }
}

/** HTTP for attachments on the JVM: the JDK's HttpClient, which speaks PATCH (HttpURLConnection does not). */
object JdkHttp : HttpTransport {
    private val client = java.net.http.HttpClient.newBuilder().connectTimeout(java.time.Duration.ofSeconds(15)).build()

    override fun exchange(method: String, url: String, headers: Map<String, String>, body: ByteArray?): HttpReply {
        val request = java.net.http.HttpRequest.newBuilder(java.net.URI.create(url))
            .method(
                method,
                if (body == null) java.net.http.HttpRequest.BodyPublishers.noBody() else java.net.http.HttpRequest.BodyPublishers.ofByteArray(body),
            )
        for ((k, v) in headers) request.header(k, v)
        val res = client.send(request.build(), java.net.http.HttpResponse.BodyHandlers.ofByteArray())
        return HttpReply(res.statusCode(), res.headers().map().mapKeys { it.key.lowercase() }.mapValues { it.value.first() }, res.body())
    }
}
