// The device's live connection: reconnect with jittered backoff, resume from cursors, outbox, acks.
package dev.natter.client

import dev.natter.v1.Ack
import dev.natter.v1.ClientBatch
import dev.natter.v1.ClientFrame
import dev.natter.v1.Cursor
import dev.natter.v1.Delete
import dev.natter.v1.Edit
import dev.natter.v1.Forward
import dev.natter.v1.Heartbeat
import dev.natter.v1.Hello
import dev.natter.v1.Message
import dev.natter.v1.MessageKind
import dev.natter.v1.MessageState
import dev.natter.v1.React
import dev.natter.v1.Read
import dev.natter.v1.Send
import dev.natter.v1.SendResult
import dev.natter.v1.ServerFrame
import dev.natter.v1.StreamError
import dev.natter.v1.TypingRequest
import dev.natter.v1.User
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineName
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Deferred
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.ExperimentalCoroutinesApi
import kotlinx.coroutines.Job
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.currentCoroutineContext
import kotlinx.coroutines.delay
import kotlinx.coroutines.ensureActive
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.flow
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import java.util.UUID
import kotlin.random.Random

/** How a [Connection] behaves; the defaults suit an app. */
data class ConnectionOptions(
    /**
     * Per thread, the last seq the app has stored (its saved [Connection.cursors]): the server
     * replays from there. Threads not named start from the server's cursor for this device.
     */
    val cursors: Map<Long, Long> = emptyMap(),
    /** Replay nothing for threads without a cursor here: the app pages their history on demand. */
    val skipReplay: Boolean = false,
    /**
     * Ack a message when the app takes it from [Connection.events]. Turn off to ack only after
     * the app has stored it, with [Connection.ack].
     */
    val autoAck: Boolean = true,
    /** Ask `Locate` which socket server holds the user's streams before each connect (cluster mode). */
    val locate: Boolean = false,
    /** Heartbeat every this many seconds; 0 means the server's interval from `Welcome`. */
    val heartbeatSeconds: Int = 0,
    /** The longest pause between reconnects; pauses are jittered and grow from 100 ms. */
    val maxBackoffMillis: Long = 5_000,
    /**
     * The last entry of the user's own change log (delete for me) the app has: its saved
     * [Connection.userLogSeq]. The server replays the later ones as [Event.UserChanged]; null
     * replays the whole log, unless [skipReplay] is set (then the log is not asked for).
     */
    val userLogSeq: Long? = null,
    /**
     * The fold to go on with ([Connection.fold]): an app that keeps one across connections
     * (with the [cursors] it saved) sees later edits, reactions and deletes land on messages
     * an earlier connection brought. A new, empty one by default.
     */
    val fold: Fold? = null,
)

/** Counters, for tests and diagnostics. */
class ConnectionStats {
    @Volatile var connects = 0
    @Volatile var resends = 0
    @Volatile var gapsFilled = 0
    @Volatile var heartbeatAcks = 0
    @Volatile var heldBack = 0

    /** Frames whose payload this SDK does not know (a newer server): skipped. */
    @Volatile var unknownFrames = 0
}

/** Where a [Connection] stands. */
enum class ConnectionState { CONNECTING, SYNCING, ONLINE, DISCONNECTED, CLOSED }

/**
 * A send waiting in the outbox; [Connection.pendingSends] lists them so an app can keep them
 * across restarts ([send] is the whole frame: pass it to [Connection.post] again).
 */
data class PendingSend(
    val clientMsgId: String,
    val text: String,
    val threadId: Long,
    val recipient: String,
    val send: Send = Send.getDefaultInstance(),
)

/**
 * Holds one device's `SocketService.Connect` stream open across failures and keeps natter's
 * delivery contract:
 *
 * - **Outbox.** [send] and [post] go into an outbox, in call order, each with a client_msg_id;
 *   every (re)connect sends the outbox again, oldest first, with the same ids, so a send lands
 *   once whatever happens to the stream. After a transient refusal the server holds back this
 *   device's later sends until the refused one comes again, so the connection pauses (jittered
 *   backoff) and resends from the oldest unanswered entry: messages keep their order.
 * - **Exactly once, in order.** Messages from the replay, live pushes and history pass through
 *   a [Merger]: each `(thread, seq)` comes once, in order per thread; gaps are filled from
 *   `ThreadService.ListMessages`.
 * - **Acks only for what the app took.** A message is acked (cumulative per-thread cursors,
 *   coalesced into one frame a few times a second) when the app takes it from [events], or
 *   when it calls [ack] (with [ConnectionOptions.autoAck] off). What the app never took is
 *   replayed by the next connect; [cursors] is what to save and pass back.
 * - **Resume.** `Hello` carries the cursors of what arrived, so a reconnect replays only what
 *   is missing; heartbeats go at the `Welcome`'s interval; `Redirect` and (with
 *   [ConnectionOptions.locate]) `Locate` move the stream to the socket server that owns the
 *   user in a cluster; reconnects back off with jitter.
 *
 * State lives on one serial dispatcher, so every method is safe to call from any thread.
 */
@OptIn(ExperimentalCoroutinesApi::class)
class Connection internal constructor(
    val client: NatterClient,
    private val options: ConnectionOptions,
) {
    private val serial = Dispatchers.Default.limitedParallelism(1)
    private val job = SupervisorJob()
    private val scope = CoroutineScope(job + serial + CoroutineName("natter-connection"))

    private val merger = Merger(options.cursors) // what arrived: de-duplication, gaps, Hello

    /** Every entry surfaced, folded: edits, deletes and reactions on their messages, hidden ones. */
    val fold: Fold = options.fold ?: Fold()
    private val logWanted = options.userLogSeq != null || !options.skipReplay
    private var logArrived = options.userLogSeq ?: 0 // the user's change log: what arrived
    private var logTaken = options.userLogSeq ?: 0 // and what the app took (guarded by ackLock)
    private val ackLock = Any()
    private val taken = HashMap(options.cursors) // what the app took (guarded by ackLock)
    private val ackDirty = HashMap<Long, Long>() // taken, not yet acked (guarded by ackLock)

    private val queueLock = Any()
    private val queue = ArrayDeque<Event>() // guarded by queueLock
    private val arrived = Channel<Unit>(Channel.CONFLATED)

    private val requests = Channel<Request>(Channel.UNLIMITED) // sends, in call order
    private val outbox = LinkedHashMap<String, Pending>()
    private val pendingReads = HashMap<Long, Long>()
    private var out: Channel<ClientFrame>? = null
    private var epoch = 0
    private var live = false // welcomed on the current stream
    private var acksOk = false // the current stream replayed or pushed something: it takes acks
    private var holding = false // a send was refused for now: nothing goes out until resume
    private var resume: Job? = null
    private val ackScheduled = java.util.concurrent.atomic.AtomicBoolean(false)
    private var runJob: Job? = null
    private var address = client.server
    private var lastFrameNanos = 0L
    private var finalError: NatterException? = null
    @Volatile private var closing = false

    private val _state = MutableStateFlow(ConnectionState.DISCONNECTED)
    val state: StateFlow<ConnectionState> = _state.asStateFlow()
    val stats = ConnectionStats()

    /** The authenticated user and device, from the last `Welcome`. */
    @Volatile var user: User? = client.user
        private set
    @Volatile var deviceId: Long = client.deviceId
        private set

    private class Pending(val send: Send, val result: CompletableDeferred<SendResult>) {
        var sentOn = -1
        var retries = 0
    }

    private class Request(val send: Send, val result: CompletableDeferred<SendResult>)

    private class Redirected : Exception()

    init {
        scope.launch {
            for (r in requests) accept(r)
        }
    }

    // -- public ---------------------------------------------------------------------------

    /**
     * Every event, in order. Taking a [Event.Received] from this flow is what acks it (with
     * [ConnectionOptions.autoAck]). Collect it from one place: each event goes to one collector.
     * The flow ends after [close] once the events already queued are taken.
     */
    val events: Flow<Event> = flow {
        while (true) {
            currentCoroutineContext().ensureActive()
            val ev = synchronized(queueLock) { queue.removeFirstOrNull() }
            if (ev == null) {
                if (arrived.receiveCatching().isClosed && synchronized(queueLock) { queue.isEmpty() }) return@flow
                continue
            }
            took(ev)
            emit(ev)
        }
    }

    /** Events waiting in the queue for the app to take. */
    val queuedEvents: Int get() = synchronized(queueLock) { queue.size }

    /** The next event, or null after [timeoutMillis]; taking a message acks it, as with [events]. */
    suspend fun nextEvent(timeoutMillis: Long = Long.MAX_VALUE): Event? = withTimeoutOrNull(timeoutMillis) {
        var ev: Event? = null
        while (ev == null) {
            ev = synchronized(queueLock) { queue.removeFirstOrNull() }
            if (ev == null && arrived.receiveCatching().isClosed && synchronized(queueLock) { queue.isEmpty() }) break
        }
        ev?.also(::took)
    }

    /**
     * Opens the stream (and keeps it open until [close]). With [waitSynced], returns once the
     * replay is done; throws [UnauthenticatedException] when the token is refused.
     */
    suspend fun start(waitSynced: Boolean = true, timeoutMillis: Long = 30_000): Connection {
        withContext(serial) {
            if (runJob == null) {
                _state.value = ConnectionState.CONNECTING
                runJob = scope.launch { run() }
            }
        }
        if (waitSynced) {
            withTimeout(timeoutMillis) {
                state.first { it == ConnectionState.ONLINE || it == ConnectionState.CLOSED }
            }
            finalError?.let { throw copyOf(it) }
        }
        return this
    }

    /**
     * Sends a message and waits until the server has stored it (the [SendResult]), retrying
     * across reconnects with the same client_msg_id; throws the refusal's typed exception
     * when the server refuses it for good. Name the thread, or the recipient's username for a
     * direct message (the thread is created if needed). [replyToSeq] quotes a message of the
     * same thread; [attachmentIds] are uploads ([NatterClient.upload]) to send, with [text]
     * as the caption (may be empty). Cancelling the wait leaves the message in the outbox.
     */
    suspend fun send(
        text: String,
        threadId: Long = 0,
        recipient: String = "",
        clientMsgId: String = "",
        replyToSeq: Long = 0,
        attachmentIds: List<String> = emptyList(),
    ): SendResult = post(text, threadId, recipient, clientMsgId, replyToSeq, attachmentIds).await()

    /**
     * [send] without waiting: the message joins the outbox now, after every earlier [post] or
     * [send] of this thread of control, and is stored in that order (per-device FIFO).
     */
    fun post(
        text: String,
        threadId: Long = 0,
        recipient: String = "",
        clientMsgId: String = "",
        replyToSeq: Long = 0,
        attachmentIds: List<String> = emptyList(),
    ): Deferred<SendResult> {
        val builder = Send.newBuilder().setClientMsgId(clientMsgId).setText(text)
            .setReplyToSeq(replyToSeq).addAllAttachmentIds(attachmentIds)
        if (threadId != 0L) builder.threadId = threadId else builder.recipient = recipient
        return post(builder.build())
    }

    /**
     * Any `Send` frame (a saved [PendingSend.send], or one built with fields this SDK has no
     * call for), through the outbox like [post]; an empty client_msg_id gets a new one.
     */
    fun post(send: Send): Deferred<SendResult> {
        val frame = if (send.clientMsgId.isEmpty()) send.toBuilder().setClientMsgId(UUID.randomUUID().toString()).build() else send
        val result = CompletableDeferred<SendResult>()
        if (requests.trySend(Request(frame, result)).isFailure) {
            result.completeExceptionally(closedError())
        }
        return result
    }

    /**
     * Sets this user's reaction to message [seq] of a thread: one emoji per member, replacing
     * theirs; an empty [emoji] removes it. An event in the thread's log, like [edit] and [delete]:
     * it goes through the outbox in order and comes back folded onto its target.
     */
    suspend fun react(threadId: Long, seq: Long, emoji: String, clientMsgId: String = ""): SendResult =
        post(change(threadId, clientMsgId).setReact(React.newBuilder().setSeq(seq).setEmoji(emoji)).build()).await()

    /** Changes the text of one of this user's messages, within the server's edit window. */
    suspend fun edit(threadId: Long, seq: Long, text: String, clientMsgId: String = ""): SendResult =
        post(change(threadId, clientMsgId).setText(text).setEdit(Edit.newBuilder().setSeq(seq)).build()).await()

    /** Deletes a message for everyone: one's own within the delete window, or any as a group admin. */
    suspend fun delete(threadId: Long, seq: Long, clientMsgId: String = ""): SendResult =
        post(change(threadId, clientMsgId).setDelete(Delete.newBuilder().setSeq(seq)).build()).await()

    /**
     * Forwards a copy of message [seq] of thread [fromThread] (marked forwarded, attachments by
     * reference) to a thread, or to a person by [recipient].
     */
    suspend fun forward(
        fromThread: Long,
        seq: Long,
        threadId: Long = 0,
        recipient: String = "",
        clientMsgId: String = "",
    ): SendResult {
        val builder = Send.newBuilder().setClientMsgId(clientMsgId)
            .setForward(Forward.newBuilder().setThreadId(fromThread).setSeq(seq))
        if (threadId != 0L) builder.threadId = threadId else builder.recipient = recipient
        return post(builder.build()).await()
    }

    private fun change(threadId: Long, clientMsgId: String): Send.Builder =
        Send.newBuilder().setClientMsgId(clientMsgId).setThreadId(threadId)

    /** Sends in the outbox, oldest first (sent or not, not yet acknowledged). */
    suspend fun pendingSends(): List<PendingSend> = withContext(serial) {
        outbox.values.map { PendingSend(it.send.clientMsgId, it.send.text, it.send.threadId, it.send.recipient, it.send) }
    }

    /** Marks a thread read up to [seq] (a read receipt for the others); sent after the next sync when offline. */
    suspend fun read(threadId: Long, seq: Long) {
        withContext(serial) {
            val o = out
            if (live && acksOk && o != null) {
                o.trySend(ClientFrame.newBuilder().setRead(Read.newBuilder().setThreadId(threadId).setSeq(seq)).build())
            } else if (seq > (pendingReads[threadId] ?: 0)) {
                pendingReads[threadId] = seq
            }
        }
    }

    /** Tells the thread's other members the user is typing (or stopped); dropped while offline. */
    suspend fun typing(threadId: Long, active: Boolean = true): Boolean = withContext(serial) {
        val o = out
        live && o != null && o.trySend(
            ClientFrame.newBuilder().setTyping(TypingRequest.newBuilder().setThreadId(threadId).setActive(active)).build(),
        ).isSuccess
    }

    /**
     * Everything up to [seq] of the thread is shown or stored: move this device's cursor there.
     * With [ConnectionOptions.autoAck] taking a message from [events] does this.
     */
    fun ack(threadId: Long, seq: Long) {
        synchronized(ackLock) {
            if (seq > (taken[threadId] ?: 0)) taken[threadId] = seq
            if (seq > (ackDirty[threadId] ?: 0)) ackDirty[threadId] = seq
        }
        scheduleAcks()
    }

    /**
     * Per thread, how far the app has taken messages (or acked them). Save these and pass them
     * as [ConnectionOptions.cursors] next time: what the app never took comes again.
     */
    val cursors: Map<Long, Long> get() = synchronized(ackLock) { HashMap(taken) }

    /**
     * How far the app has taken the user's own change log ([Event.UserChanged]): save it with
     * [cursors] and pass it back as [ConnectionOptions.userLogSeq].
     */
    val userLogSeq: Long get() = synchronized(ackLock) { logTaken }

    /** Ends the connection: pending acks are written first; sends still in the outbox fail. */
    suspend fun close() {
        if (closing) return
        closing = true
        val wasLive = withContext(serial) {
            flushAcks()
            out?.close() // half-close: the server ends the stream once it has read the acks
            live
        }
        requests.close()
        val run = runJob
        if (wasLive && run != null) withTimeoutOrNull(2_000) { run.join() }
        withContext(serial) {
            for (p in outbox.values) p.result.completeExceptionally(closedError())
            outbox.clear()
        }
        job.cancel()
        job.join()
        _state.value = ConnectionState.CLOSED
        arrived.close()
    }

    // -- the loop -------------------------------------------------------------------------

    private suspend fun run() {
        var attempt = 0
        while (!closing) {
            val reason = try {
                val redirected = session()
                attempt = 0
                if (redirected) "redirected" else "stream ended"
            } catch (e: CancellationException) {
                throw e
            } catch (e: Throwable) {
                val err = NatterException.from(e)
                // Logged out, a bad token, or this device's token opened a newer stream elsewhere
                // (which the server keeps): trying again would only repeat it.
                if (err is UnauthenticatedException || err.reason == "CONNECTED_ELSEWHERE") {
                    giveUp(err)
                    return
                }
                "${err.reason}: ${err.message}"
            }
            live = false
            out = null
            stopHolding()
            if (reason != "redirected") address = client.server // a failed redirect target may be gone
            if (closing) return
            _state.value = ConnectionState.DISCONNECTED
            push(Event.Disconnected(reason, final = false))
            val cap = minOf(options.maxBackoffMillis, 100L shl minOf(attempt, 20))
            delay(Random.nextLong(0, cap + 1))
            attempt = minOf(attempt + 1, 10)
            _state.value = ConnectionState.CONNECTING
        }
    }

    private fun giveUp(err: NatterException) {
        finalError = err
        live = false
        out = null
        for (p in outbox.values) p.result.completeExceptionally(copyOf(err))
        outbox.clear()
        _state.value = ConnectionState.CLOSED
        push(Event.Disconnected(err.message ?: err.reason, final = true, error = err))
    }

    /** One stream, from Hello to its end; true when the server redirected the device. */
    private suspend fun session(): Boolean {
        var target = address
        val me = client.user ?: user
        if (options.locate && me != null) {
            try {
                target = client.locate(me.username)
            } catch (_: NatterException) {
                // The front door is busy: try the address we have.
            }
        }
        val own = target == client.server
        val channel = if (own) client.channel else client.channels.open(target)
        try {
            val o = Channel<ClientFrame>(Channel.UNLIMITED)
            out = o
            epoch += 1
            acksOk = false
            live = false
            val hello = Hello.newBuilder().setSkipReplay(options.skipReplay).setAcceptBatches(true)
            if (logWanted) hello.userLogSeq = logArrived
            for ((t, s) in merger.cursors) hello.addCursors(Cursor.newBuilder().setThreadId(t).setSeq(s))
            o.trySend(ClientFrame.newBuilder().setHello(hello).build())
            lastFrameNanos = System.nanoTime()
            try {
                coroutineScope {
                    var heart: Job? = null
                    client.stubFor(channel).connect(batched(o), client.metadata()).collect { outer ->
                        lastFrameNanos = System.nanoTime()
                        val frames =
                            if (outer.payloadCase == ServerFrame.PayloadCase.BATCH) outer.batch.framesList else listOf(outer)
                        for (frame in frames) {
                            when (frame.payloadCase) {
                                ServerFrame.PayloadCase.WELCOME -> {
                                    val w = frame.welcome
                                    user = w.user
                                    deviceId = w.deviceId
                                    if (client.user == null) {
                                        client.user = w.user
                                        client.deviceId = w.deviceId
                                    }
                                    stats.connects += 1
                                    live = true
                                    _state.value = ConnectionState.SYNCING
                                    stopHolding() // a new stream holds nothing back
                                    transmit(outbox.values.toList()) // the outbox first, oldest first
                                    push(Event.Connected(w.nodeId, target))
                                    val seconds = options.heartbeatSeconds.takeIf { it > 0 }
                                        ?: w.heartbeatIntervalSeconds.takeIf { it > 0 } ?: 5
                                    heart?.cancel()
                                    heart = launch { heartbeat(seconds * 1000L) }
                                }
                                ServerFrame.PayloadCase.REDIRECT -> {
                                    address = frame.redirect.address
                                    throw Redirected()
                                }
                                else -> onFrame(frame)
                            }
                        }
                    }
                    heart?.cancel()
                }
            } catch (_: Redirected) {
                return true
            } finally {
                o.close()
                if (out === o) out = null
                live = false
                acksOk = false
            }
        } finally {
            if (!own) channel.shutdownNow()
        }
        return false
    }

    /** Beats at the interval; a stream silent for three beats and five seconds is dead: end it. */
    private suspend fun heartbeat(intervalMillis: Long) {
        val frame = ClientFrame.newBuilder().setHeartbeat(Heartbeat.getDefaultInstance()).build()
        while (true) {
            delay(intervalMillis)
            val silentMillis = (System.nanoTime() - lastFrameNanos) / 1_000_000
            if (silentMillis > 3 * intervalMillis + 5_000) {
                throw UnavailableException("NO_HEARTBEAT_ACK", "no frame from the server for $silentMillis ms")
            }
            out?.trySend(frame)
        }
    }

    private suspend fun onFrame(frame: ServerFrame) {
        when (frame.payloadCase) {
            ServerFrame.PayloadCase.MESSAGE -> {
                acksOk = true
                offer(frame.message)
            }
            ServerFrame.PayloadCase.SEND_RESULT -> {
                val r = frame.sendResult
                val p = outbox.remove(r.clientMsgId) ?: return
                val me = user
                if (r.hasMessage()) {
                    offer(r.message.toBuilder().setState(MessageState.MESSAGE_STATE_SENT).build())
                } else if (me != null) {
                    offer(ownMessage(r, p.send.text, me))
                }
                p.result.complete(r)
            }
            ServerFrame.PayloadCase.SYNC_DONE -> {
                acksOk = true
                if (synchronized(ackLock) { ackDirty.isNotEmpty() }) scheduleAcks() // taken while offline
                val o = out
                if (o != null) {
                    for ((t, s) in pendingReads) {
                        o.trySend(ClientFrame.newBuilder().setRead(Read.newBuilder().setThreadId(t).setSeq(s)).build())
                    }
                    pendingReads.clear()
                }
                _state.value = ConnectionState.ONLINE
                push(Event.SyncDone(frame.syncDone.replayed))
            }
            ServerFrame.PayloadCase.RECEIPT -> push(Event.ReceiptEvent(frame.receipt))
            ServerFrame.PayloadCase.PRESENCE -> push(Event.PresenceEvent(frame.presence))
            ServerFrame.PayloadCase.TYPING -> push(Event.TypingEvent(frame.typing))
            ServerFrame.PayloadCase.READ_CURSOR -> push(Event.ReadCursor(frame.readCursor.cursor.threadId, frame.readCursor.cursor.seq))
            ServerFrame.PayloadCase.HEARTBEAT_ACK -> stats.heartbeatAcks += 1
            ServerFrame.PayloadCase.USER_CHANGE -> {
                val c = frame.userChange
                if (c.seq > logArrived) {
                    logArrived = c.seq
                    val at = fold.change(c)
                    push(Event.UserChanged(c, at?.let { fold.view(it.first, it.second) }))
                }
            }
            ServerFrame.PayloadCase.ERROR -> onError(frame.error)
            // A payload added to the contracts after this SDK was built: skipped, never a crash.
            else -> stats.unknownFrames += 1
        }
    }

    private fun onError(e: StreamError) {
        val p = if (e.clientMsgId.isNotEmpty()) outbox[e.clientMsgId] else null
        val err = NatterException.of(e.code, e.message, e.reason)
        when {
            p != null && err.transient -> holdBack(p)
            p != null -> {
                outbox.remove(e.clientMsgId)
                p.result.completeExceptionally(err)
            }
            else -> push(Event.Rejected(err))
        }
    }

    // -- receiving ------------------------------------------------------------------------

    private suspend fun offer(m: Message) {
        val (released, first) = merger.offer(m)
        released.forEach(::surface)
        var gap = first
        while (gap != null) {
            val threadId = gap.threadId
            val before = merger.cursor(threadId) ?: 0
            val page = client.history(
                threadId,
                afterSeq = gap.afterSeq,
                forward = true,
                limit = (gap.beforeSeq - gap.afterSeq - 1).coerceIn(1, 1000).toInt(),
            )
            stats.gapsFilled += 1
            val firstSeq = page.messages.firstOrNull()?.seq ?: gap.beforeSeq
            if (firstSeq > gap.afterSeq + 1) {
                // History starts later: those seqs are not this member's to see (before they
                // joined, after they left) and will never come. Move past them.
                merger.skipTo(threadId, minOf(firstSeq, gap.beforeSeq) - 1).forEach(::surface)
            }
            for (row in page.messages) merger.offer(row).first.forEach(::surface)
            gap = merger.pendingGap(threadId)
            if (gap != null && (merger.cursor(threadId) ?: 0) == before) {
                throw InternalException(
                    "GAP_NOT_FILLED",
                    "history of thread $threadId did not fill seqs ${gap.afterSeq + 1}..${gap.beforeSeq - 1}",
                )
            }
        }
    }

    private fun isOwn(m: Message): Boolean {
        val me = user ?: return false
        return m.sender.userId == me.userId && m.senderDeviceId == deviceId
    }

    private fun surface(m: Message) {
        val (t, s) = fold.apply(m)
        push(Event.Received(m, own = isOwn(m), view = fold.view(t, s)))
    }

    private fun push(ev: Event) {
        synchronized(queueLock) { queue.addLast(ev) }
        arrived.trySend(Unit)
    }

    /** The app took [ev]: a message is now shown or stored. */
    private fun took(ev: Event) {
        if (ev is Event.UserChanged) {
            synchronized(ackLock) { if (ev.change.seq > logTaken) logTaken = ev.change.seq }
            return
        }
        if (ev !is Event.Received || !options.autoAck) return
        val m = ev.message
        if (ev.own) {
            synchronized(ackLock) { if (m.seq > (taken[m.threadId] ?: 0)) taken[m.threadId] = m.seq }
        } else {
            ack(m.threadId, m.seq)
        }
    }

    /** One flush a few times a second, whatever the number of messages taken meanwhile. */
    private fun scheduleAcks() {
        if (!ackScheduled.compareAndSet(false, true)) return
        scope.launch {
            delay(50)
            ackScheduled.set(false)
            flushAcks()
        }
    }

    private fun flushAcks() {
        // A new stream takes acks once it has replayed or pushed something; sync done flushes.
        val o = out ?: return
        if (!acksOk) return
        val acks = synchronized(ackLock) {
            if (ackDirty.isEmpty()) return
            HashMap(ackDirty).also { ackDirty.clear() }
        }
        val ack = Ack.newBuilder()
        for ((t, s) in acks) ack.addCursors(Cursor.newBuilder().setThreadId(t).setSeq(s))
        if (o.trySend(ClientFrame.newBuilder().setAck(ack).build()).isFailure) {
            synchronized(ackLock) { for ((t, s) in acks) if (s > (ackDirty[t] ?: 0)) ackDirty[t] = s }
        }
    }

    // -- sending --------------------------------------------------------------------------

    private fun accept(r: Request) {
        finalError?.let {
            r.result.completeExceptionally(copyOf(it))
            return
        }
        val existing = outbox[r.send.clientMsgId]
        if (existing != null) {
            existing.result.invokeOnCompletion { e ->
                if (e == null) r.result.complete(existing.result.getCompleted()) else r.result.completeExceptionally(e)
            }
            return
        }
        val p = Pending(r.send, r.result)
        outbox[r.send.clientMsgId] = p
        transmit(listOf(p))
    }

    /**
     * Writes the given sends not yet on this stream, in outbox order. Nothing goes out before
     * the stream is welcomed (then the outbox goes first) or while sends are held back.
     */
    private fun transmit(pendings: List<Pending>) {
        val o = out
        if (!live || holding || o == null) return
        for (p in pendings) {
            if (p.sentOn == epoch) continue
            if (p.sentOn != -1) stats.resends += 1
            p.sentOn = epoch
            o.trySend(ClientFrame.newBuilder().setSend(p.send).build())
        }
    }

    /**
     * A send refused for now: after a pause it goes again, and every send after it too. The
     * server refuses the device's later sends until this one comes again (so none overtakes
     * it); their refusals are expected and change nothing.
     */
    private fun holdBack(refused: Pending) {
        if (refused.sentOn == -1) return // already waiting to go again
        val keys = outbox.keys.toList()
        for (key in keys.subList(keys.indexOf(refused.send.clientMsgId), keys.size)) outbox.getValue(key).sentOn = -1
        refused.retries += 1
        stats.heldBack += 1
        holding = true
        if (resume?.isActive == true) return
        val at = epoch
        val cap = minOf(options.maxBackoffMillis, 200L shl minOf(refused.retries, 5))
        val pause = (cap * (0.5 + Random.nextDouble() / 2)).toLong()
        resume = scope.launch {
            delay(pause)
            if (epoch == at) {
                holding = false
                transmit(outbox.values.toList())
            }
        }
    }

    private fun stopHolding() {
        holding = false
        resume?.cancel()
        resume = null
    }

    private fun ownMessage(r: SendResult, text: String, me: User): Message =
        Message.newBuilder()
            .setThreadId(r.threadId).setSeq(r.seq).setMsgId(r.msgId)
            .setSender(me).setSenderDeviceId(deviceId).setClientMsgId(r.clientMsgId)
            .setKind(MessageKind.MESSAGE_KIND_TEXT).setText(text).setCreateTime(r.createTime)
            .setState(MessageState.MESSAGE_STATE_SENT)
            .build()

    private fun closedError(): NatterException =
        UnavailableException("CONNECTION_CLOSED", "the connection was closed before the send was acknowledged")

    private fun copyOf(e: NatterException): NatterException = NatterException.of(e.code, e.message ?: "", e.reason)

    private companion object {
        const val BATCH_BYTES = 64 * 1024
        const val BATCH_FRAMES = 256

        /** Frames written together go out as few stream messages, each within the limits, in order. */
        fun batched(ch: Channel<ClientFrame>): Flow<ClientFrame> = flow {
            for (first in ch) {
                val frames = arrayListOf(first)
                while (true) frames.add(ch.tryReceive().getOrNull() ?: break)
                for (f in pack(frames)) emit(f)
            }
        }

        fun pack(frames: List<ClientFrame>): List<ClientFrame> {
            if (frames.size == 1) return frames
            val whole = ClientFrame.newBuilder().setBatch(ClientBatch.newBuilder().addAllFrames(frames)).build()
            if (frames.size <= BATCH_FRAMES && whole.serializedSize <= BATCH_BYTES) return listOf(whole)
            val half = frames.size / 2
            return pack(frames.subList(0, half)) + pack(frames.subList(half, frames.size))
        }
    }
}
