// The unary side: typed calls over the public gRPC services, errors as NatterException.
package dev.natter.client

import dev.natter.v1.AccountServiceGrpcKt
import dev.natter.v1.AddContactRequest
import dev.natter.v1.AddMembersRequest
import dev.natter.v1.Contact
import dev.natter.v1.ContactServiceGrpcKt
import dev.natter.v1.CreateGroupRequest
import dev.natter.v1.Device
import dev.natter.v1.DiscoverContactsRequest
import dev.natter.v1.GetDirectThreadRequest
import dev.natter.v1.GetMeRequest
import dev.natter.v1.GetMeResponse
import dev.natter.v1.GetPresenceRequest
import dev.natter.v1.GetThreadRequest
import dev.natter.v1.GetThreadResponse
import dev.natter.v1.GroupServiceGrpcKt
import dev.natter.v1.LeaveGroupRequest
import dev.natter.v1.ListContactsRequest
import dev.natter.v1.ListDevicesRequest
import dev.natter.v1.ListMessagesRequest
import dev.natter.v1.ListThreadsRequest
import dev.natter.v1.LocateRequest
import dev.natter.v1.LoginRequest
import dev.natter.v1.LogoutRequest
import dev.natter.v1.MemberRole
import dev.natter.v1.Message
import dev.natter.v1.Presence
import dev.natter.v1.PresenceServiceGrpcKt
import dev.natter.v1.RegisterRequest
import dev.natter.v1.RemoveContactRequest
import dev.natter.v1.RemoveMembersRequest
import dev.natter.v1.RenameGroupRequest
import dev.natter.v1.SetMemberRoleRequest
import dev.natter.v1.SocketServiceGrpcKt
import dev.natter.v1.Thread
import dev.natter.v1.ThreadServiceGrpcKt
import dev.natter.v1.UpdateSettingsRequest
import dev.natter.v1.User
import io.grpc.Channel
import io.grpc.ManagedChannel
import io.grpc.ManagedChannelBuilder
import io.grpc.Metadata
import java.util.concurrent.TimeUnit

/**
 * Opens a gRPC channel to a natter server address (`host:port`). The app picks the
 * transport and security: on Android, `OkHttpChannelBuilder` (grpc-okhttp) with TLS; on the
 * JVM, any `ManagedChannelBuilder` (grpc-netty-shaded). The connection also opens channels
 * through it to the socket server that `Locate` or a `Redirect` names (cluster mode).
 */
fun interface ChannelFactory {
    fun open(address: String): ManagedChannel

    companion object {
        /** Plaintext, for a server on this machine or a trusted network. */
        fun plaintext(): ChannelFactory = ChannelFactory { address ->
            ManagedChannelBuilder.forTarget(address).usePlaintext().keepAlive().build()
        }

        /** TLS with the platform's trusted roots. */
        fun tls(): ChannelFactory = ChannelFactory { address ->
            ManagedChannelBuilder.forTarget(address).useTransportSecurity().keepAlive().build()
        }

        // The SDK's call callbacks never block (they hand frames to coroutines), so they run on the
        // transport's own thread: one thread hop less per frame.
        private fun ManagedChannelBuilder<*>.keepAlive(): ManagedChannelBuilder<*> =
            keepAliveTime(20, TimeUnit.SECONDS).keepAliveTimeout(10, TimeUnit.SECONDS)
                .maxInboundMessageSize(16 * 1024 * 1024).directExecutor()
    }
}

/** What [NatterClient.login] returns: who logged in, as which device, and the device's token. */
data class Login(val user: User, val deviceId: Long, val token: String)

/** One page of a thread's history, oldest first; [more] when the server has more that way. */
data class HistoryPage(val messages: List<Message>, val more: Boolean)

/**
 * One natter server, one channel. After [login] (or with a saved [token]) every call is
 * authenticated as that device. Data comes back as the generated `dev.natter.v1` messages, so
 * fields added to the contracts later are there for an app that updates its generated code,
 * and harmless for one that does not.
 *
 * ```
 * val client = NatterClient("chat.example.org:7070", ChannelFactory.tls())
 * client.login("alice", password, deviceName = "Pixel 9")
 * client.connect().use { conn -> conn.send("hi bob", recipient = "bob") }
 * ```
 */
class NatterClient(
    /** `host:port` of the front door (the embedded server, or a message_svc in a cluster). */
    val server: String,
    val channels: ChannelFactory = ChannelFactory.plaintext(),
    /** The device token from an earlier [login], if the app saved it. */
    @Volatile var token: String = "",
    /** Deadline of every unary call. */
    val timeoutMillis: Long = 15_000,
) : AutoCloseable {
    val channel: ManagedChannel = channels.open(server)

    /** Filled by [login], or by the first `Welcome` of a [Connection] made with a saved token. */
    @Volatile var user: User? = null
    @Volatile var deviceId: Long = 0

    private val accounts = AccountServiceGrpcKt.AccountServiceCoroutineStub(channel)
    private val contactsStub = ContactServiceGrpcKt.ContactServiceCoroutineStub(channel)
    private val threadsStub = ThreadServiceGrpcKt.ThreadServiceCoroutineStub(channel)
    private val groupsStub = GroupServiceGrpcKt.GroupServiceCoroutineStub(channel)
    private val presenceStub = PresenceServiceGrpcKt.PresenceServiceCoroutineStub(channel)
    private val socketStub = SocketServiceGrpcKt.SocketServiceCoroutineStub(channel)

    /** The `authorization` header for the current token (empty metadata when logged out). */
    fun metadata(): Metadata = Metadata().also { md ->
        if (token.isNotEmpty()) md.put(AUTHORIZATION, "Bearer $token")
    }

    private suspend fun <S : io.grpc.kotlin.AbstractCoroutineStub<S>, R> S.call(block: suspend S.(Metadata) -> R): R =
        try {
            withDeadlineAfter(timeoutMillis, TimeUnit.MILLISECONDS).block(metadata())
        } catch (e: Exception) {
            throw NatterException.from(e)
        }

    /** A [Connection] for this device: call [Connection.start], collect [Connection.events]. */
    fun connect(options: ConnectionOptions = ConnectionOptions()): Connection = Connection(this, options)

    /** Stops the channel (and those a connection opened for redirects, when they close). */
    override fun close() {
        channel.shutdown()
        if (!channel.awaitTermination(2, TimeUnit.SECONDS)) channel.shutdownNow()
    }

    internal fun stubFor(channel: Channel): SocketServiceGrpcKt.SocketServiceCoroutineStub =
        SocketServiceGrpcKt.SocketServiceCoroutineStub(channel)

    // -- accounts -------------------------------------------------------------------------

    suspend fun register(username: String, password: String, displayName: String = "", phone: String = ""): User =
        accounts.call {
            register(
                RegisterRequest.newBuilder()
                    .setUsername(username).setPassword(password).setDisplayName(displayName).setPhone(phone)
                    .build(),
                it,
            ).user
        }

    /** Logs in as a new device; its token then authenticates every call (save it to stay logged in). */
    suspend fun login(username: String, password: String, deviceName: String = "kotlin"): Login {
        val res = accounts.call {
            login(
                LoginRequest.newBuilder()
                    .setUsername(username).setPassword(password).setDeviceName(deviceName).build(),
                it,
            )
        }
        token = res.token
        user = res.user
        deviceId = res.deviceId
        return Login(res.user, res.deviceId, res.token)
    }

    /** Revokes this device's token; its open streams are closed by the server. */
    suspend fun logout() {
        accounts.call { logout(LogoutRequest.getDefaultInstance(), it) }
    }

    suspend fun me(): GetMeResponse = accounts.call { getMe(GetMeRequest.getDefaultInstance(), it) }

    suspend fun devices(): List<Device> =
        accounts.call { listDevices(ListDevicesRequest.getDefaultInstance(), it).devicesList }

    suspend fun updateSettings(displayName: String? = null, hideLastSeen: Boolean? = null) {
        accounts.call {
            updateSettings(
                UpdateSettingsRequest.newBuilder().apply {
                    if (displayName != null) setDisplayName(displayName)
                    if (hideLastSeen != null) setHideLastSeen(hideLastSeen)
                }.build(),
                it,
            )
        }
    }

    // -- contacts -------------------------------------------------------------------------

    suspend fun addContact(username: String, alias: String = ""): Contact =
        contactsStub.call {
            addContact(AddContactRequest.newBuilder().setUsername(username).setAlias(alias).build(), it).contact
        }

    suspend fun removeContact(username: String) {
        contactsStub.call { removeContact(RemoveContactRequest.newBuilder().setUsername(username).build(), it) }
    }

    /** Every contact, all pages. */
    suspend fun contacts(): List<Contact> {
        val out = ArrayList<Contact>()
        var pageToken = ""
        do {
            val res = contactsStub.call {
                listContacts(ListContactsRequest.newBuilder().setPageSize(1000).setPageToken(pageToken).build(), it)
            }
            out.addAll(res.contactsList)
            pageToken = res.nextPageToken
        } while (pageToken.isNotEmpty())
        return out
    }

    /** Which of these usernames or phone numbers belong to someone, by identifier. */
    suspend fun discover(identifiers: List<String>): Map<String, User> =
        contactsStub.call {
            discoverContacts(DiscoverContactsRequest.newBuilder().addAllIdentifiers(identifiers).build(), it)
                .foundList.associate { f -> f.identifier to f.user }
        }

    // -- threads --------------------------------------------------------------------------

    /** Threads, latest first; all of them, or the first [limit]. */
    suspend fun threads(limit: Int = 0): List<Thread> {
        val out = ArrayList<Thread>()
        var pageToken = ""
        do {
            val res = threadsStub.call {
                listThreads(
                    ListThreadsRequest.newBuilder()
                        .setPageSize(if (limit > 0) minOf(limit, 500) else 500).setPageToken(pageToken).build(),
                    it,
                )
            }
            out.addAll(res.threadsList)
            pageToken = res.nextPageToken
        } while (pageToken.isNotEmpty() && (limit == 0 || out.size < limit))
        return if (limit > 0 && out.size > limit) out.subList(0, limit).toList() else out
    }

    suspend fun thread(threadId: Long): GetThreadResponse =
        threadsStub.call { getThread(GetThreadRequest.newBuilder().setThreadId(threadId).build(), it) }

    /** The direct thread with a person (created on first use). */
    suspend fun directThread(username: String): Thread =
        threadsStub.call { getDirectThread(GetDirectThreadRequest.newBuilder().setUsername(username).build(), it).thread }

    /**
     * A page of a thread: the newest [limit] by default, older than [beforeSeq], or (with
     * [forward]) the oldest after [afterSeq]. Pages are always oldest first.
     */
    suspend fun history(
        threadId: Long,
        beforeSeq: Long = 0,
        afterSeq: Long = 0,
        limit: Int = 50,
        forward: Boolean = false,
    ): HistoryPage {
        val res = threadsStub.call {
            listMessages(
                ListMessagesRequest.newBuilder()
                    .setThreadId(threadId).setBeforeSeq(beforeSeq).setAfterSeq(afterSeq)
                    .setLimit(limit).setForward(forward).build(),
                it,
            )
        }
        return HistoryPage(res.messagesList, res.more)
    }

    // -- groups ---------------------------------------------------------------------------

    suspend fun createGroup(title: String, members: List<String>): Thread =
        groupsStub.call {
            createGroup(CreateGroupRequest.newBuilder().setTitle(title).addAllMembers(members).build(), it).thread
        }

    suspend fun renameGroup(threadId: Long, title: String): Message =
        groupsStub.call {
            renameGroup(RenameGroupRequest.newBuilder().setThreadId(threadId).setTitle(title).build(), it).message
        }

    suspend fun addMembers(threadId: Long, members: List<String>): Message =
        groupsStub.call {
            addMembers(AddMembersRequest.newBuilder().setThreadId(threadId).addAllMembers(members).build(), it).message
        }

    suspend fun removeMembers(threadId: Long, members: List<String>): Message =
        groupsStub.call {
            removeMembers(
                RemoveMembersRequest.newBuilder().setThreadId(threadId).addAllMembers(members).build(),
                it,
            ).message
        }

    suspend fun setRole(threadId: Long, members: List<String>, admin: Boolean): Message =
        groupsStub.call {
            setMemberRole(
                SetMemberRoleRequest.newBuilder()
                    .setThreadId(threadId).addAllMembers(members)
                    .setRole(if (admin) MemberRole.MEMBER_ROLE_ADMIN else MemberRole.MEMBER_ROLE_MEMBER)
                    .build(),
                it,
            ).message
        }

    suspend fun leaveGroup(threadId: Long) {
        groupsStub.call { leaveGroup(LeaveGroupRequest.newBuilder().setThreadId(threadId).build(), it) }
    }

    // -- presence and routing -------------------------------------------------------------

    /** Online status of contacts and people one shares a thread with (others are left out). */
    suspend fun presence(usernames: List<String>): List<Presence> =
        presenceStub.call {
            getPresence(GetPresenceRequest.newBuilder().addAllUsernames(usernames).build(), it).presencesList
        }

    /** `host:port` of the socket server that holds this user's streams (cluster mode). */
    suspend fun locate(username: String): String =
        socketStub.call { locate(LocateRequest.newBuilder().setUsername(username).build(), it).address }

    internal companion object {
        val AUTHORIZATION: Metadata.Key<String> = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER)
    }
}
