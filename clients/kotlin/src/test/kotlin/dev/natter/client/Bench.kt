// The Kotlin SDK under load (run by bench/sdks.py): sender/recipient pairs, closed loop, send→deliver latency.
package dev.natter.client

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeoutOrNull
import java.lang.management.ManagementFactory
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.ConcurrentLinkedQueue
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicLong

private const val BENCH_PASSWORD = "bench horse battery"
private const val TEXT_BYTES = 64 // as the Python bench and its echo ceiling
private const val STAMP_DIGITS = 20

private fun text(stamp: Long): String {
    val head = stamp.toString().padStart(STAMP_DIGITS, '0') + " "
    return head + "x".repeat(TEXT_BYTES - head.length)
}

private fun cpuNanos(): Long =
    (ManagementFactory.getOperatingSystemMXBean() as com.sun.management.OperatingSystemMXBean).processCpuTime

private fun percentile(sorted: List<Long>, p: Double): Double =
    if (sorted.isEmpty()) 0.0 else sorted[minOf(sorted.size - 1, (p / 100 * sorted.size).toInt())] / 1e6

/**
 * `Bench ADDRESS PAIRS SECONDS INFLIGHT WARMUP_SECONDS`: prints `window-start` and `window-end`
 * when the measured window opens and closes (the caller reads the server's CPU then), and a
 * JSON line with the figures at the end. Timestamps are System.nanoTime (CLOCK_MONOTONIC).
 */
fun main(args: Array<String>) = runBlocking(Dispatchers.Default) {
    val address = args[0]
    val pairs = args[1].toInt()
    val seconds = args[2].toDouble()
    val inflight = args[3].toInt()
    val warmup = args.getOrNull(4)?.toDouble() ?: 2.0
    val tag = "k" + java.lang.Long.toHexString(System.nanoTime()).takeLast(8)

    data class Pair(val sender: NatterClient, val recipient: NatterClient, val peer: String)
    val made = (0 until pairs).map { i ->
        async {
            val s = NatterClient(address, timeoutMillis = 60_000)
            s.register("${tag}s$i", BENCH_PASSWORD)
            s.login("${tag}s$i", BENCH_PASSWORD, "bench")
            val r = NatterClient(address, timeoutMillis = 60_000)
            r.register("${tag}r$i", BENCH_PASSWORD)
            r.login("${tag}r$i", BENCH_PASSWORD, "bench")
            Pair(s, r, "${tag}r$i")
        }
    }.awaitAll()
    val sendConns = made.map { it.sender.connect().start() }
    val recvConns = made.map { it.recipient.connect().start() }
    for ((i, p) in made.withIndex()) sendConns[i].send("warm up", recipient = p.peer)
    for (c in recvConns) c.received(1, 60_000)

    val delivered = AtomicLong()
    val deliveredInWindow = AtomicLong()
    val duplicates = AtomicLong()
    val acked = AtomicLong()
    val ackedInWindow = AtomicLong()
    val failed = AtomicLong()
    val latencies = ConcurrentLinkedQueue<Long>()
    val seen = ConcurrentHashMap.newKeySet<String>()
    val measuring = AtomicBoolean(false)
    val warmupEnd = System.nanoTime() + (warmup * 1e9).toLong()
    val stopAt = warmupEnd + (seconds * 1e9).toLong()

    val consumers = mutableListOf<Job>()
    for (c in sendConns) consumers += launch { c.events.collect { } } // own copies: keep the queue short
    for (c in recvConns) {
        consumers += launch {
            c.events.collect { ev ->
                if (ev !is Event.Received || ev.own) return@collect
                val t = ev.message.text
                if (t.length < STAMP_DIGITS || !t[0].isDigit()) return@collect
                val now = System.nanoTime()
                if (!seen.add(ev.message.msgId)) {
                    duplicates.incrementAndGet()
                    return@collect
                }
                delivered.incrementAndGet()
                val stamp = t.substring(0, STAMP_DIGITS).toLong()
                if (measuring.get()) {
                    if (now <= stopAt) deliveredInWindow.incrementAndGet()
                    latencies.add(now - stamp)
                }
            }
        }
    }

    val senders = sendConns.flatMapIndexed { i, c ->
        (0 until inflight).map {
            launch {
                while (System.nanoTime() < stopAt) {
                    val stamp = System.nanoTime()
                    try {
                        c.send(text(stamp), recipient = made[i].peer)
                    } catch (_: NatterException) {
                        failed.incrementAndGet()
                        continue
                    }
                    acked.incrementAndGet()
                    val now = System.nanoTime()
                    if (stamp >= warmupEnd && now <= stopAt) ackedInWindow.incrementAndGet()
                }
            }
        }
    }
    // The JVM compiles its hot paths during the warm-up; the window measures the steady state.
    delay(maxOf(0L, (warmupEnd - System.nanoTime()) / 1_000_000))
    latencies.clear()
    measuring.set(true)
    val cpu0 = cpuNanos()
    println("window-start")
    System.out.flush()
    delay(maxOf(0L, (stopAt - System.nanoTime()) / 1_000_000))
    val cpu1 = cpuNanos()
    println("window-end")
    System.out.flush()
    senders.forEach { it.join() }
    withTimeoutOrNull(15_000) { while (delivered.get() < acked.get()) delay(20) }
    consumers.forEach { it.cancel() }
    val sorted = latencies.toList().filter { it >= 0 }.sorted()
    println(
        "{\"acked\": ${acked.get()}, \"acked_in_window\": ${ackedInWindow.get()}, \"delivered\": ${delivered.get()}, " +
            "\"delivered_in_window\": ${deliveredInWindow.get()}, \"duplicates\": ${duplicates.get()}, \"failed\": ${failed.get()}, " +
            "\"p50_ms\": ${percentile(sorted, 50.0)}, \"p95_ms\": ${percentile(sorted, 95.0)}, \"p99_ms\": ${percentile(sorted, 99.0)}, " +
            "\"client_cpu\": ${(cpu1 - cpu0) / 1e9}}",
    )
    System.out.flush()
    CoroutineScope(Dispatchers.Default).launch { for (c in sendConns + recvConns) c.close() }.join()
    for (p in made) {
        p.sender.close()
        p.recipient.close()
    }
}
