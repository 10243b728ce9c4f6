"""The Python SDK's unary side: typed calls over the public gRPC services, errors as NatterError."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from natter import convert
from natter import domain as d
from natter.rpc import error_from_rpc
from natter.v1 import account_service_pb2 as apb
from natter.v1 import account_service_pb2_grpc as apb_grpc
from natter.v1 import admin_service_pb2 as adpb
from natter.v1 import admin_service_pb2_grpc as adpb_grpc
from natter.v1 import contact_service_pb2 as cpb
from natter.v1 import contact_service_pb2_grpc as cpb_grpc
from natter.v1 import group_service_pb2 as gpb
from natter.v1 import group_service_pb2_grpc as gpb_grpc
from natter.v1 import media_service_pb2 as mdpb
from natter.v1 import media_service_pb2_grpc as mdpb_grpc
from natter.v1 import presence_service_pb2 as ppb
from natter.v1 import presence_service_pb2_grpc as ppb_grpc
from natter.v1 import push_service_pb2 as pspb
from natter.v1 import push_service_pb2_grpc as pspb_grpc
from natter.v1 import safety_service_pb2 as sfpb
from natter.v1 import safety_service_pb2_grpc as sfpb_grpc
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from natter.v1 import thread_service_pb2 as tpb
from natter.v1 import thread_service_pb2_grpc as tpb_grpc

R = TypeVar("R")

# ReportReason by name, as the CLI and apps say it.
REPORT_REASONS = {
    "spam": sfpb.REPORT_REASON_SPAM,
    "harassment": sfpb.REPORT_REASON_HARASSMENT,
    "sexual": sfpb.REPORT_REASON_SEXUAL,
    "scam": sfpb.REPORT_REASON_SCAM,
    "illegal": sfpb.REPORT_REASON_ILLEGAL,
    "other": sfpb.REPORT_REASON_OTHER,
}
POLICIES = {
    "open": apb.REGISTRATION_POLICY_OPEN,
    "invite": apb.REGISTRATION_POLICY_INVITE,
    "closed": apb.REGISTRATION_POLICY_CLOSED,
}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Bounds the wait for any ping ack (gRPC's default is a minute): a dead server is noticed.
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
# A target with several addresses (a name with several records, `ipv4:a,b`): calls go round
# them, so one replica that accepts connections but answers nothing (cut off from its
# database) holds up only the calls sent to it, not every call of the client.
LB_POLICY = ("grpc.lb_policy_name", "round_robin")


def open_channel(
    address: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """A channel to a natter server: TLS when credentials are given (natter.tls)."""
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=[*CHANNEL_OPTIONS, LB_POLICY])
    return grpc.aio.insecure_channel(address, options=[*CHANNEL_OPTIONS, LB_POLICY])


class Client:
    """One server address, one channel; `token` authenticates every call once logged in."""

    def __init__(
        self,
        server: str,
        token: str = "",
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.server = server
        self.token = token
        self.timeout = timeout
        self.credentials = credentials
        self.channel = open_channel(server, credentials)
        self.accounts = apb_grpc.AccountServiceStub(self.channel)
        self.contacts_stub = cpb_grpc.ContactServiceStub(self.channel)
        self.threads_stub = tpb_grpc.ThreadServiceStub(self.channel)
        self.groups_stub = gpb_grpc.GroupServiceStub(self.channel)
        self.presence_stub = ppb_grpc.PresenceServiceStub(self.channel)
        self.push_stub = pspb_grpc.PushServiceStub(self.channel)
        self.socket_stub = spb_grpc.SocketServiceStub(self.channel)
        self.media_stub = mdpb_grpc.MediaServiceStub(self.channel)
        self.safety_stub = sfpb_grpc.SafetyServiceStub(self.channel)
        self.admin_stub = adpb_grpc.AdminServiceStub(self.channel)
        self.user: d.User | None = None
        self.device_id = 0
        self.is_admin = False
        # From the last login: when the token lapses unless used, devices it replaced.
        self.expire_time: Any = None
        self.replaced_devices: list[int] = []

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    async def _call(self, fn: Callable[..., Awaitable[R]], request: Any) -> R:
        try:
            return await fn(request, metadata=self.metadata(), timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from None

    # -- accounts ------------------------------------------------------------------------

    async def register(
        self,
        username: str,
        password: str,
        display_name: str = "",
        phone: str = "",
        invite_code: str = "",
    ) -> d.User:
        """Create an account; `is_admin` says afterwards whether it is the server's first."""
        res = await self._call(
            self.accounts.Register,
            apb.RegisterRequest(
                username=username,
                password=password,
                display_name=display_name,
                phone=phone,
                invite_code=invite_code,
            ),
        )
        self.is_admin = res.is_admin
        return convert.user_of(res.user)

    async def registration_policy(self) -> str:
        """open, invite or closed."""
        res = await self._call(
            self.accounts.GetRegistrationPolicy, apb.GetRegistrationPolicyRequest()
        )
        return POLICY_NAMES.get(res.policy, "unknown")

    async def login(
        self,
        username: str,
        password: str,
        device_name: str = "sdk",
        platform: str = "python",
        replace_oldest: bool = False,
    ) -> str:
        res = await self._call(
            self.accounts.Login,
            apb.LoginRequest(
                username=username,
                password=password,
                device_name=device_name,
                platform=platform,
                replace_oldest_device=replace_oldest,
            ),
        )
        self.token = res.token
        self.user = convert.user_of(res.user)
        self.device_id = res.device_id
        self.expire_time = convert.opt_ts(res, "expire_time")
        self.replaced_devices = list(res.replaced_device_ids)
        return res.token

    async def logout(self) -> None:
        await self._call(self.accounts.Logout, apb.LogoutRequest())

    async def devices(self) -> list[d.Device]:
        res = await self._call(self.accounts.ListDevices, apb.ListDevicesRequest())
        return [convert.device_of(x) for x in res.devices]

    async def revoke_device(self, device_id: int) -> None:
        """Log out one of this account's devices (this one too, like logout)."""
        await self._call(self.accounts.RevokeDevice, apb.RevokeDeviceRequest(device_id=device_id))

    async def revoke_other_devices(self) -> list[int]:
        res = await self._call(self.accounts.RevokeOtherDevices, apb.RevokeOtherDevicesRequest())
        return list(res.revoked_device_ids)

    async def change_password(
        self, current: str, new: str, keep_other_devices: bool = False
    ) -> list[int]:
        """Returns the devices logged out (every other one, unless kept)."""
        res = await self._call(
            self.accounts.ChangePassword,
            apb.ChangePasswordRequest(
                current_password=current, new_password=new, keep_other_devices=keep_other_devices
            ),
        )
        return list(res.revoked_device_ids)

    async def delete_account(self, password: str) -> None:
        await self._call(self.accounts.DeleteAccount, apb.DeleteAccountRequest(password=password))

    async def me(self) -> apb.GetMeResponse:
        return await self._call(self.accounts.GetMe, apb.GetMeRequest())

    async def update_settings(
        self,
        display_name: str | None = None,
        hide_last_seen: bool | None = None,
        notification_preview: d.NotificationPreview | None = None,
        about: str | None = None,
        picture_id: str | None = None,
    ) -> None:
        """Change settings; `notification_preview` is the privacy mode of push notifications.

        `about` is the status line ("" clears it); `picture_id` an image attachment the
        user uploaded (upload_file) as the profile picture ("" removes it).
        """
        req = apb.UpdateSettingsRequest()
        if about is not None:
            req.about = about
        if picture_id is not None:
            req.picture_id = picture_id
        if display_name is not None:
            req.display_name = display_name
        if hide_last_seen is not None:
            req.hide_last_seen = hide_last_seen
        if notification_preview is not None:
            req.notification_preview = convert.preview(notification_preview)
        await self._call(self.accounts.UpdateSettings, req)

    # -- contacts ------------------------------------------------------------------------

    async def add_contact(self, username: str, alias: str = "") -> cpb.Contact:
        res = await self._call(
            self.contacts_stub.AddContact, cpb.AddContactRequest(username=username, alias=alias)
        )
        return res.contact

    async def remove_contact(self, username: str) -> None:
        await self._call(
            self.contacts_stub.RemoveContact, cpb.RemoveContactRequest(username=username)
        )

    async def contacts(self) -> list[cpb.Contact]:
        out: list[cpb.Contact] = []
        token = ""
        while True:
            res = await self._call(
                self.contacts_stub.ListContacts,
                cpb.ListContactsRequest(page_size=1000, page_token=token),
            )
            out.extend(res.contacts)
            token = res.next_page_token
            if not token:
                return out

    async def discover(self, identifiers: list[str]) -> dict[str, d.User]:
        res = await self._call(
            self.contacts_stub.DiscoverContacts,
            cpb.DiscoverContactsRequest(identifiers=identifiers),
        )
        return {f.identifier: convert.user_of(f.user) for f in res.found}

    # -- threads -------------------------------------------------------------------------

    async def threads(self, limit: int = 0) -> list[Any]:
        out: list[Any] = []
        token = ""
        while True:
            res = await self._call(
                self.threads_stub.ListThreads,
                tpb.ListThreadsRequest(
                    page_size=min(limit, 500) if limit else 500, page_token=token
                ),
            )
            out.extend(res.threads)
            token = res.next_page_token
            if not token or (limit and len(out) >= limit):
                return out[:limit] if limit else out

    async def thread(self, thread_id: int) -> tpb.GetThreadResponse:
        return await self._call(
            self.threads_stub.GetThread, tpb.GetThreadRequest(thread_id=thread_id)
        )

    async def direct_thread(self, username: str) -> Any:
        res = await self._call(
            self.threads_stub.GetDirectThread, tpb.GetDirectThreadRequest(username=username)
        )
        return res.thread

    async def history(
        self,
        thread_id: int,
        before_seq: int = 0,
        after_seq: int = 0,
        limit: int = 50,
        forward: bool = False,
        folded: bool = False,
    ) -> tuple[list[d.Message], bool]:
        """A page of a thread: the newest by default, older with before_seq, newer with after_seq.

        With `folded`, events are left out: each message already carries its edits, its
        delete and its reactions (for display; a merge that tracks seqs wants every entry).
        """
        res = await self._call(
            self.threads_stub.ListMessages,
            tpb.ListMessagesRequest(
                thread_id=thread_id,
                before_seq=before_seq,
                after_seq=after_seq,
                limit=limit,
                forward=forward,
                folded=folded,
            ),
        )
        return [convert.message_of(m) for m in res.messages], res.more

    async def search(
        self, query: str, thread_id: int = 0, page_size: int = 20, page_token: str = ""
    ) -> tuple[list[d.Message], str]:
        """Messages holding every word of the query that this user can see, best first."""
        res = await self._call(
            self.threads_stub.SearchMessages,
            tpb.SearchMessagesRequest(
                query=query, thread_id=thread_id, page_size=page_size, page_token=page_token
            ),
        )
        return [convert.message_of(m) for m in res.messages], res.next_page_token

    async def hide(self, thread_id: int, seqs: list[int]) -> list[d.UserChange]:
        """Delete messages for this user only: hidden on all of their devices."""
        res = await self._call(
            self.threads_stub.HideMessages, tpb.HideMessagesRequest(thread_id=thread_id, seqs=seqs)
        )
        return [convert.user_change_of(c) for c in res.changes]

    async def user_changes(
        self, after_seq: int = 0, limit: int = 0
    ) -> tuple[list[d.UserChange], bool]:
        res = await self._call(
            self.threads_stub.ListUserChanges,
            tpb.ListUserChangesRequest(after_seq=after_seq, limit=limit),
        )
        return [convert.user_change_of(c) for c in res.changes], res.more

    async def media_info(self) -> mdpb.GetMediaInfoResponse:
        return await self._call(self.media_stub.GetMediaInfo, mdpb.GetMediaInfoRequest())

    async def attachment(self, attachment_id: str) -> mdpb.GetAttachmentResponse:
        """An attachment this user may see, with signed links to it (paths under http_url)."""
        return await self._call(
            self.media_stub.GetAttachment, mdpb.GetAttachmentRequest(attachment_id=attachment_id)
        )

    async def all_history(self, thread_id: int, page: int = 1000) -> AsyncIterator[d.Message]:
        after = 0
        while True:
            rows, more = await self.history(thread_id, after_seq=after, limit=page, forward=True)
            for m in rows:
                yield m
            if not rows or not more:
                return
            after = rows[-1].seq

    async def mute(self, thread_id: int, duration: timedelta | None = None) -> d.Thread:
        """No push notifications of a thread, for `duration` or (None) until unmuted."""
        req = tpb.MuteThreadRequest(thread_id=thread_id)
        if duration is None:
            req.forever = True
        else:
            req.duration.CopyFrom(Duration(seconds=int(duration.total_seconds())))
        res = await self._call(self.threads_stub.MuteThread, req)
        return convert.thread_of(res.thread)

    async def unmute(self, thread_id: int) -> d.Thread:
        res = await self._call(
            self.threads_stub.UnmuteThread, tpb.UnmuteThreadRequest(thread_id=thread_id)
        )
        return convert.thread_of(res.thread)

    # -- push notifications ----------------------------------------------------------------

    async def push_config(self) -> pspb.GetPushConfigResponse:
        """The server's VAPID public key (applicationServerKey), gateways and grace period."""
        return await self._call(self.push_stub.GetPushConfig, pspb.GetPushConfigRequest())

    async def set_web_push(self, endpoint: str, p256dh: str, auth: str) -> pspb.PushTarget:
        """Register this device's Web Push subscription (a PushSubscription's toJSON())."""
        sub = pspb.WebPushSubscription(endpoint=endpoint, p256dh=p256dh, auth=auth)
        res = await self._call(
            self.push_stub.SetPushTarget, pspb.SetPushTargetRequest(web_push=sub)
        )
        return res.target

    async def set_push_gateway(
        self, gateway_url: str, app_id: str, pushkey: str
    ) -> pspb.PushTarget:
        """Register this device's FCM/APNs token behind a push gateway."""
        target = pspb.GatewayTarget(gateway_url=gateway_url, app_id=app_id, pushkey=pushkey)
        res = await self._call(
            self.push_stub.SetPushTarget, pspb.SetPushTargetRequest(gateway=target)
        )
        return res.target

    async def push_target(self) -> pspb.PushTarget | None:
        res = await self._call(self.push_stub.GetPushTarget, pspb.GetPushTargetRequest())
        return res.target if res.HasField("target") else None

    async def delete_push_target(self) -> None:
        await self._call(self.push_stub.DeletePushTarget, pspb.DeletePushTargetRequest())

    # -- groups --------------------------------------------------------------------------

    async def create_group(self, title: str, members: list[str]) -> Any:
        res = await self._call(
            self.groups_stub.CreateGroup, gpb.CreateGroupRequest(title=title, members=members)
        )
        return res.thread

    async def rename_group(self, thread_id: int, title: str) -> d.Message:
        res = await self._call(
            self.groups_stub.RenameGroup, gpb.RenameGroupRequest(thread_id=thread_id, title=title)
        )
        return convert.message_of(res.message)

    async def add_members(self, thread_id: int, members: list[str]) -> d.Message:
        res = await self._call(
            self.groups_stub.AddMembers, gpb.AddMembersRequest(thread_id=thread_id, members=members)
        )
        return convert.message_of(res.message)

    async def remove_members(self, thread_id: int, members: list[str]) -> d.Message:
        res = await self._call(
            self.groups_stub.RemoveMembers,
            gpb.RemoveMembersRequest(thread_id=thread_id, members=members),
        )
        return convert.message_of(res.message)

    async def set_role(self, thread_id: int, members: list[str], admin: bool) -> d.Message:
        role = d.Role.ADMIN if admin else d.Role.MEMBER
        res = await self._call(
            self.groups_stub.SetMemberRole,
            gpb.SetMemberRoleRequest(
                thread_id=thread_id,
                members=members,
                role=convert.role(role),
            ),
        )
        return convert.message_of(res.message)

    async def leave_group(self, thread_id: int) -> None:
        await self._call(self.groups_stub.LeaveGroup, gpb.LeaveGroupRequest(thread_id=thread_id))

    # -- presence and routing ------------------------------------------------------------

    async def presence(self, usernames: list[str]) -> list[d.Presence]:
        res = await self._call(
            self.presence_stub.GetPresence, ppb.GetPresenceRequest(usernames=usernames)
        )
        return [convert.presence_of(p) for p in res.presences]

    # -- safety --------------------------------------------------------------------------

    async def block(self, username: str) -> d.User:
        res = await self._call(self.safety_stub.BlockUser, sfpb.BlockUserRequest(username=username))
        return convert.user_of(res.user)

    async def unblock(self, username: str) -> None:
        await self._call(self.safety_stub.UnblockUser, sfpb.UnblockUserRequest(username=username))

    async def blocked(self) -> list[d.User]:
        out: list[d.User] = []
        token = ""
        while True:
            res = await self._call(
                self.safety_stub.ListBlockedUsers,
                sfpb.ListBlockedUsersRequest(page_size=1000, page_token=token),
            )
            out.extend(convert.user_of(u) for u in res.users)
            token = res.next_page_token
            if not token:
                return out

    async def report(
        self,
        username: str = "",
        reason: str = "spam",
        text: str = "",
        thread_id: int = 0,
        seqs: list[int] | None = None,
        block: bool = False,
    ) -> int:
        """Report a user, or messages (thread_id and seqs), to the admins; the report's id."""
        res = await self._call(
            self.safety_stub.CreateReport,
            sfpb.CreateReportRequest(
                username=username,
                thread_id=thread_id,
                seqs=seqs or [],
                reason=REPORT_REASONS.get(reason, sfpb.REPORT_REASON_UNSPECIFIED),
                text=text,
                block=block,
            ),
        )
        return res.report_id

    # -- administration (admin accounts only) --------------------------------------------

    async def admin(self, method: str, request: Any) -> Any:
        """Any AdminService call by its method name (ListUsers, GetUser, ...)."""
        return await self._call(getattr(self.admin_stub, method), request)

    async def admin_users(self, query: str = "") -> list[adpb.Account]:
        out: list[adpb.Account] = []
        token = ""
        while True:
            res = await self.admin(
                "ListUsers", adpb.ListUsersRequest(query=query, page_size=1000, page_token=token)
            )
            out.extend(res.accounts)
            token = res.next_page_token
            if not token:
                return out

    async def locate(self, username: str) -> str:
        res = await self._call(self.socket_stub.Locate, spb.LocateRequest(username=username))
        return res.address
