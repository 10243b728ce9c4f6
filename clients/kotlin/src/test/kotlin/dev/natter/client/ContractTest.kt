// A socket server from the future (frames with fields and enum values this SDK does not know),
// and front doors that move the stream elsewhere (Redirect, Locate), over real gRPC.
package dev.natter.client

import com.google.protobuf.ByteString
import com.google.protobuf.CodedOutputStream
import dev.natter.v1.ClientFrame
import dev.natter.v1.LocateRequest
import dev.natter.v1.LocateResponse
import dev.natter.v1.Message
import dev.natter.v1.MessageKind
import dev.natter.v1.Receipt
import dev.natter.v1.ReceiptKind
import dev.natter.v1.Redirect
import dev.natter.v1.ServerBatch
import dev.natter.v1.ServerFrame
import dev.natter.v1.SocketServiceGrpcKt
import dev.natter.v1.SyncDone
import dev.natter.v1.User
import dev.natter.v1.UserChange
import dev.natter.v1.UserChangeKind
import dev.natter.v1.Welcome
import io.grpc.Server
import io.grpc.Status
import io.grpc.StatusException
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder
import kotlinx.coroutines.awaitCancellation
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.ProducerScope
import kotlinx.coroutines.channels.ReceiveChannel
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.channelFlow
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import java.io.ByteArrayOutputStream
import java.net.InetSocketAddress
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit

/** A SocketService that answers each Connect with a script, and records what the device sent. */
class ScriptedServer(
    private val locateTo: String = "",
    private val script: suspend ProducerScope<ServerFrame>.(ReceiveChannel<ClientFrame>) -> Unit,
) : AutoCloseable {
    /** Every frame received (batches flattened), with its arrival time in nanoseconds. */
    val received = CopyOnWriteArrayList<Pair<Long, ClientFrame>>()

    private val server: Server = NettyServerBuilder.forAddress(InetSocketAddress("127.0.0.1", 0))
        .addService(object : SocketServiceGrpcKt.SocketServiceCoroutineImplBase() {
            override fun connect(requests: Flow<ClientFrame>): Flow<ServerFrame> = channelFlow {
                val incoming = Channel<ClientFrame>(Channel.UNLIMITED)
                launch {
                    requests.collect { f ->
                        val frames = if (f.payloadCase == ClientFrame.PayloadCase.BATCH) f.batch.framesList else listOf(f)
                        for (x in frames) {
                            received.add(System.nanoTime() to x)
                            incoming.send(x)
                        }
                    }
                    incoming.close()
                }
                script(incoming)
            }

            override suspend fun locate(request: LocateRequest): LocateResponse {
                if (locateTo.isEmpty()) throw StatusException(Status.UNIMPLEMENTED)
                return LocateResponse.newBuilder().setAddress(locateTo).setNodeId("real").build()
            }
        })
        .build()
        .start()

    val address: String get() = "127.0.0.1:${server.port}"

    fun of(case: ClientFrame.PayloadCase): List<Pair<Long, ClientFrame>> = received.filter { it.second.payloadCase == case }

    override fun close() {
        server.shutdownNow()
        server.awaitTermination(5, TimeUnit.SECONDS)
    }
}

/** `bytes` with one more length-delimited field appended: a field this SDK's contracts lack. */
fun withUnknownField(bytes: ByteArray, field: Int, value: String): ByteArray {
    val buf = ByteArrayOutputStream()
    buf.write(bytes)
    val out = CodedOutputStream.newInstance(buf)
    out.writeBytes(field, ByteString.copyFromUtf8(value))
    out.flush()
    return buf.toByteArray()
}

fun welcome(intervalSeconds: Int = 5): ServerFrame = ServerFrame.newBuilder().setWelcome(
    Welcome.newBuilder()
        .setUser(User.newBuilder().setUserId(1).setUsername("future").setDisplayName("Future"))
        .setDeviceId(7).setHeartbeatIntervalSeconds(intervalSeconds).setNodeId("scripted"),
).build()

@Timeout(60)
class ContractTest {
    @Test
    fun `frames with fields and enum values this SDK does not know are skipped or surfaced, never a crash`() = runBlocking {
        val peer = User.newBuilder().setUserId(2).setUsername("peer").build()
        // A message of a kind added to the contracts later (42), carrying a field added later (50).
        val future = Message.newBuilder().setThreadId(9).setSeq(1).setMsgId("m1").setSender(peer)
            .setKindValue(42).setText("").build()
        val futureBytes = withUnknownField(future.toByteArray(), 50, "a reaction, say")
        val futureMessage = Message.parseFrom(futureBytes)
        // A frame whose payload is a oneof case added later (field 99).
        val unknownFrame = ServerFrame.parseFrom(withUnknownField(ByteArray(0), 99, "a new kind of frame"))
        val text = Message.newBuilder().setThreadId(9).setSeq(2).setMsgId("m2").setSender(peer)
            .setKind(MessageKind.MESSAGE_KIND_TEXT).setText("still here").build()
        // A reaction to the message of the unknown kind, and an entry of the user's own log of a
        // kind added later (9).
        val reaction = Message.newBuilder().setThreadId(9).setSeq(3).setMsgId("m3").setSender(peer)
            .setKind(MessageKind.MESSAGE_KIND_REACTION).setTargetSeq(1).setEmoji("👍").build()
        val futureChange = UserChange.newBuilder().setSeq(1).setKindValue(9).build()

        ScriptedServer { incoming ->
            check(incoming.receive().payloadCase == ClientFrame.PayloadCase.HELLO)
            send(welcome(intervalSeconds = 1))
            send(unknownFrame)
            send(ServerFrame.newBuilder().setMessage(futureMessage).build())
            send(ServerFrame.newBuilder().setReceipt(Receipt.newBuilder().setThreadId(9).setUser(peer).setKindValue(9).setSeq(1)).build())
            send(ServerFrame.newBuilder().setBatch(ServerBatch.newBuilder().addFrames(unknownFrame).addFrames(ServerFrame.newBuilder().setMessage(text))).build())
            send(ServerFrame.newBuilder().setMessage(reaction).build())
            send(ServerFrame.newBuilder().setUserChange(futureChange).build())
            send(ServerFrame.newBuilder().setSyncDone(SyncDone.newBuilder().setReplayed(3)).build())
            for (f in incoming) {
                if (f.payloadCase == ClientFrame.PayloadCase.HEARTBEAT) {
                    send(ServerFrame.newBuilder().setHeartbeatAck(dev.natter.v1.HeartbeatAck.getDefaultInstance()).build())
                }
            }
        }.use { scripted ->
            val client = NatterClient(scripted.address, token = "t")
            val conn = client.connect().start()
            val events = conn.until { it is Event.SyncDone }
            val received = events.filterIsInstance<Event.Received>()
            val messages = received.map { it.message }
            assertEquals(listOf(1L, 2L, 3L), messages.map { it.seq })
            assertEquals(MessageKind.UNRECOGNIZED, messages[0].kind)
            assertEquals(42, messages[0].kindValue)
            assertEquals(futureBytes.size, messages[0].serializedSize) // the unknown field is kept
            assertEquals("still here", messages[1].text)
            // Folded, the unknown kind is a message shown as unsupported; events still land on it.
            assertTrue(received[0].view!!.unsupported)
            assertFalse(received[1].view!!.unsupported)
            assertEquals(1L, received[2].view!!.seq)
            assertTrue(received[2].view!!.unsupported)
            assertEquals(mapOf("👍" to 1), received[2].view!!.counts)
            assertEquals(listOf(1L, 2L), conn.fold.thread(9).map { it.seq })
            val change = events.filterIsInstance<Event.UserChanged>().single()
            assertEquals(UserChangeKind.UNRECOGNIZED, change.change.kind)
            assertEquals(null, change.view)
            assertEquals(1L, conn.userLogSeq)
            // The Hello asked for the user's log from its start.
            val hello = scripted.of(ClientFrame.PayloadCase.HELLO).single().second.hello
            assertTrue(hello.hasUserLogSeq())
            assertEquals(0L, hello.userLogSeq)
            val receipt = events.filterIsInstance<Event.ReceiptEvent>().single().receipt
            assertEquals(ReceiptKind.UNRECOGNIZED, receipt.kind)
            assertEquals(9, receipt.kindValue)
            assertEquals(2, conn.stats.unknownFrames)
            assertEquals(ConnectionState.ONLINE, conn.state.value)

            // Every entry was taken, the unknown kind and the event too: the ack covers seq 3.
            eventually(what = "an ack up to seq 3") {
                scripted.of(ClientFrame.PayloadCase.ACK).any { (_, f) -> f.ack.cursorsList.any { it.threadId == 9L && it.seq == 3L } }
            }
            // Heartbeats at the Welcome's interval (1 s), answered.
            eventually(what = "three heartbeats") { scripted.of(ClientFrame.PayloadCase.HEARTBEAT).size >= 3 }
            val beats = scripted.of(ClientFrame.PayloadCase.HEARTBEAT).map { it.first }
            for ((a, b) in beats.zipWithNext()) assertTrue((b - a) / 1_000_000 >= 900, "heartbeats ${(b - a) / 1_000_000} ms apart")
            eventually(what = "heartbeat acks") { conn.stats.heartbeatAcks >= 2 }
            conn.close()
            client.close()
        }
    }

    @Test
    fun `a Redirect moves the stream to the socket server it names`() = runBlocking {
        NatterServer().use { real ->
            real.start()
            val alice = newUser(real.address, "alice")
            val bob = newUser(real.address, "bob")
            ScriptedServer { incoming ->
                incoming.receive()
                send(welcome())
                send(ServerFrame.newBuilder().setRedirect(Redirect.newBuilder().setAddress(real.address)).build())
                awaitCancellation()
            }.use { door ->
                val moved = NatterClient(door.address, token = bob.token)
                val cb = moved.connect().start()
                val connects = cb.until { it is Event.SyncDone }.filterIsInstance<Event.Connected>()
                assertEquals(listOf(door.address, real.address), connects.map { it.address })
                val ca = alice.connect().start()
                ca.send("after the move", recipient = bob.username)
                assertEquals("after the move", cb.received(1).single().text)
                ca.close()
                cb.close()
                moved.close()
            }
            alice.close()
            bob.close()
        }
    }

    @Test
    fun `with locate the stream goes where Locate says`() = runBlocking {
        NatterServer().use { real ->
            real.start()
            val bob = newUser(real.address, "bob")
            ScriptedServer(locateTo = real.address) { throw StatusException(Status.UNIMPLEMENTED) }.use { door ->
                val client = NatterClient(door.address, token = bob.token)
                client.user = bob.user // saved at login
                val conn = client.connect(ConnectionOptions(locate = true)).start()
                val connected = conn.until { it is Event.Connected }.last() as Event.Connected
                assertEquals(real.address, connected.address)
                assertEquals(emptyList<Pair<Long, ClientFrame>>(), door.received.toList())
                conn.close()
                client.close()
            }
            bob.close()
        }
    }
}
