// The unary side: typed calls over the public gRPC services, errors as NatterException.
package dev.natter.client

import dev.natter.v1.AccountServiceGrpcKt
import dev.natter.v1.BlockUserRequest
import dev.natter.v1.ChangePasswordRequest
import dev.natter.v1.CreateReportRequest
import dev.natter.v1.DeleteAccountRequest
import dev.natter.v1.GetAttachmentRequest
import dev.natter.v1.GetAttachmentResponse
import dev.natter.v1.GetMediaInfoRequest
import dev.natter.v1.GetMediaInfoResponse
import dev.natter.v1.HideMessagesRequest
import dev.natter.v1.ListBlockedUsersRequest
import dev.natter.v1.ListUserChangesRequest
import dev.natter.v1.MediaServiceGrpcKt
import dev.natter.v1.ReportReason
import dev.natter.v1.RevokeDeviceRequest
import dev.natter.v1.RevokeOtherDevicesRequest
import dev.natter.v1.SafetyServiceGrpcKt
import dev.natter.v1.SearchMessagesRequest
import dev.natter.v1.UnblockUserRequest
import dev.natter.v1.UserChange
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
import kotlinx.coroutines.delay
import java.util.concurrent.TimeUnit

/** Tries of a read-only call that fails UNAVAILABLE (see `read`). */
private const val READ_ATTEMPTS = 4

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

/** A page of the user's own change log ([NatterClient.userChanges]); [more] when there is more after it. */
data class UserChangePage(val changes: List<UserChange>, val more: Boolean)

/** One page of search hits, best first; pass [nextPageToken] back for the next (empty at the end). */
data class SearchPage(val messages: List<Message>, val nextPageToken: String)

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
    private val safetyStub = SafetyServiceGrpcKt.SafetyServiceCoroutineStub(channel)
    private val mediaStub = MediaServiceGrpcKt.MediaServiceCoroutineStub(channel)

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

    /**
     * A call that only reads (or gets what exists): tried again, after 0.1, 0.2 and 0.4 s, when
     * it fails UNAVAILABLE, as it does on a connection the server's restart broke a moment ago.
     * Calls that change something are not: the app decides whether to repeat them.
     */
    private suspend fun <S : io.grpc.kotlin.AbstractCoroutineStub<S>, R> S.read(block: suspend S.(Metadata) -> R): R {
        var pause = 100L
        repeat(READ_ATTEMPTS - 1) {
            try {
                return call(block)
            } catch (e: UnavailableException) {
                delay(pause)
                pause *= 2
            }
        }
        return call(block)
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

    /**
     * Logs in as a new device; its token then authenticates every call (save it to stay logged
     * in). [platform] says what the device is ("android", "jvm"), shown in the device list.
     */
    suspend fun login(username: String, password: String, deviceName: String = "kotlin", platform: String = ""): Login {
        val res = accounts.call {
            login(
                LoginRequest.newBuilder()
                    .setUsername(username).setPassword(password).setDeviceName(deviceName).setPlatform(platform).build(),
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

    suspend fun me(): GetMeResponse = accounts.read { getMe(GetMeRequest.getDefaultInstance(), it) }

    /** The user's active devices, oldest first: name, platform, last active time; [Device.getCurrent] is this one. */
    suspend fun devices(): List<Device> =
        accounts.read { listDevices(ListDevicesRequest.getDefaultInstance(), it).devicesList }

    /** Logs out one of the user's devices (a lost phone) by id; its streams are closed. */
    suspend fun revokeDevice(deviceId: Long) {
        accounts.call { revokeDevice(RevokeDeviceRequest.newBuilder().setDeviceId(deviceId).build(), it) }
    }

    /** Logs out every device of the user but this one; returns their ids. */
    suspend fun revokeOtherDevices(): List<Long> =
        accounts.call { revokeOtherDevices(RevokeOtherDevicesRequest.getDefaultInstance(), it).revokedDeviceIdsList }

    /**
     * Sets a new password, given the current one. The user's other devices are logged out
     * (their ids returned) unless [keepOtherDevices]; this device stays logged in.
     */
    suspend fun changePassword(current: String, new: String, keepOtherDevices: Boolean = false): List<Long> =
        accounts.call {
            changePassword(
                ChangePasswordRequest.newBuilder()
                    .setCurrentPassword(current).setNewPassword(new).setKeepOtherDevices(keepOtherDevices).build(),
                it,
            ).revokedDeviceIdsList
        }

    /** Deletes the account, given its password: messages stay in others' history as "Deleted account". */
    suspend fun deleteAccount(password: String) {
        accounts.call { deleteAccount(DeleteAccountRequest.newBuilder().setPassword(password).build(), it) }
    }

    /**
     * Changes settings and the profile; null leaves a field as it is. [about] is the status line
     * (at most 140 characters, one line; "" clears it), [pictureId] an image the user uploaded
     * ([upload]) as the profile picture ("" removes it). Contacts and chat partners are told live.
     */
    suspend fun updateSettings(
        displayName: String? = null,
        hideLastSeen: Boolean? = null,
        about: String? = null,
        pictureId: String? = null,
    ) {
        accounts.call {
            updateSettings(
                UpdateSettingsRequest.newBuilder().apply {
                    if (displayName != null) setDisplayName(displayName)
                    if (hideLastSeen != null) setHideLastSeen(hideLastSeen)
                    if (about != null) setAbout(about)
                    if (pictureId != null) setPictureId(pictureId)
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
            val res = contactsStub.read {
                listContacts(ListContactsRequest.newBuilder().setPageSize(1000).setPageToken(pageToken).build(), it)
            }
            out.addAll(res.contactsList)
            pageToken = res.nextPageToken
        } while (pageToken.isNotEmpty())
        return out
    }

    /** Which of these usernames or phone numbers belong to someone, by identifier. */
    suspend fun discover(identifiers: List<String>): Map<String, User> =
        contactsStub.read {
            discoverContacts(DiscoverContactsRequest.newBuilder().addAllIdentifiers(identifiers).build(), it)
                .foundList.associate { f -> f.identifier to f.user }
        }

    // -- safety ---------------------------------------------------------------------------

    /**
     * Blocks a user (username or phone): their sends to this user's direct chat are refused
     * with [PermissionDeniedException] reason `RECIPIENT_UNAVAILABLE` (the same as for a deleted
     * account, so the block is not revealed); they no longer see this user's presence or last
     * seen, nor add them to groups. In shared groups their messages still arrive (an app may
     * hide them: [blocked]). Blocking twice succeeds.
     */
    suspend fun block(username: String): User =
        safetyStub.call { blockUser(BlockUserRequest.newBuilder().setUsername(username).build(), it).user }

    /** Lifts a block; unblocking someone not blocked succeeds. */
    suspend fun unblock(username: String) {
        safetyStub.call { unblockUser(UnblockUserRequest.newBuilder().setUsername(username).build(), it) }
    }

    /** Everyone this user blocked, by username, all pages. */
    suspend fun blocked(): List<User> {
        val out = ArrayList<User>()
        var pageToken = ""
        do {
            val res = safetyStub.read {
                listBlockedUsers(ListBlockedUsersRequest.newBuilder().setPageSize(1000).setPageToken(pageToken).build(), it)
            }
            out.addAll(res.usersList)
            pageToken = res.nextPageToken
        } while (pageToken.isNotEmpty())
        return out
    }

    /**
     * Reports a user, or messages ([seqs] of [threadId]; without seqs, the user's latest there),
     * to the server's admins, who see copies of the messages as they are now; [block] blocks
     * the user too. Returns the report's id.
     */
    suspend fun report(
        reason: ReportReason,
        username: String = "",
        threadId: Long = 0,
        seqs: List<Long> = emptyList(),
        text: String = "",
        block: Boolean = false,
    ): Long = safetyStub.call {
        createReport(
            CreateReportRequest.newBuilder()
                .setReason(reason).setUsername(username).setThreadId(threadId).addAllSeqs(seqs)
                .setText(text).setBlock(block).build(),
            it,
        ).reportId
    }

    // -- threads --------------------------------------------------------------------------

    /** Threads, latest first; all of them, or the first [limit]. */
    suspend fun threads(limit: Int = 0): List<Thread> {
        val out = ArrayList<Thread>()
        var pageToken = ""
        do {
            val res = threadsStub.read {
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
        threadsStub.read { getThread(GetThreadRequest.newBuilder().setThreadId(threadId).build(), it) }

    /** The direct thread with a person (created on first use). */
    suspend fun directThread(username: String): Thread =
        threadsStub.read { getDirectThread(GetDirectThreadRequest.newBuilder().setUsername(username).build(), it).thread }

    /**
     * A page of a thread: the newest [limit] by default, older than [beforeSeq], or (with
     * [forward]) the oldest after [afterSeq]. Pages are always oldest first. Messages come
     * folded by the server; with [folded] the events (reactions, edits, deletes) are left out
     * and seqs skip, for display only: a page that goes through a [Connection]'s merge must not be.
     */
    suspend fun history(
        threadId: Long,
        beforeSeq: Long = 0,
        afterSeq: Long = 0,
        limit: Int = 50,
        forward: Boolean = false,
        folded: Boolean = false,
    ): HistoryPage {
        val res = threadsStub.read {
            listMessages(
                ListMessagesRequest.newBuilder()
                    .setThreadId(threadId).setBeforeSeq(beforeSeq).setAfterSeq(afterSeq)
                    .setLimit(limit).setForward(forward).setFolded(folded).build(),
                it,
            )
        }
        return HistoryPage(res.messagesList, res.more)
    }

    /**
     * Deletes messages for this user only (delete for me): hidden on every device of theirs
     * (as [Event.UserChanged]), unchanged for everyone else. Returns the change-log entries.
     */
    suspend fun hide(threadId: Long, seqs: List<Long>): List<UserChange> =
        threadsStub.call { hideMessages(HideMessagesRequest.newBuilder().setThreadId(threadId).addAllSeqs(seqs).build(), it).changesList }

    /** A page of the user's own change log after [afterSeq]. */
    suspend fun userChanges(afterSeq: Long = 0, limit: Int = 500): UserChangePage {
        val res = threadsStub.read {
            listUserChanges(ListUserChangesRequest.newBuilder().setAfterSeq(afterSeq).setLimit(limit).build(), it)
        }
        return UserChangePage(res.changesList, res.more)
    }

    /**
     * Full-text search over the messages this user can see (words of three letters or more; a
     * word also matches words it begins with), best first, one page; each hit is a folded
     * message with the thread and seq to jump to. [threadId] narrows it to one thread.
     */
    suspend fun search(query: String, threadId: Long = 0, pageSize: Int = 20, pageToken: String = ""): SearchPage {
        val res = threadsStub.read {
            searchMessages(
                SearchMessagesRequest.newBuilder()
                    .setQuery(query).setThreadId(threadId).setPageSize(pageSize).setPageToken(pageToken).build(),
                it,
            )
        }
        return SearchPage(res.messagesList, res.nextPageToken)
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
        presenceStub.read {
            getPresence(GetPresenceRequest.newBuilder().addAllUsernames(usernames).build(), it).presencesList
        }

    // -- attachments ----------------------------------------------------------------------

    /** Where attachments go over HTTP (`httpUrl`), the size cap and the upload chunk size. */
    suspend fun mediaInfo(): GetMediaInfoResponse = mediaStub.read { getMediaInfo(GetMediaInfoRequest.getDefaultInstance(), it) }

    /** An attachment this user may see, with signed links (paths under [mediaInfo]'s `httpUrl`) valid for a while. */
    suspend fun attachment(attachmentId: String): GetAttachmentResponse =
        mediaStub.read { getAttachment(GetAttachmentRequest.newBuilder().setAttachmentId(attachmentId).build(), it) }

    /** `host:port` of the socket server that holds this user's streams (cluster mode). */
    suspend fun locate(username: String): String =
        socketStub.read { locate(LocateRequest.newBuilder().setUsername(username).build(), it).address }

    internal companion object {
        val AUTHORIZATION: Metadata.Key<String> = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER)
    }
}
