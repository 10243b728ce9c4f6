"""Thin gRPC servicers of message_svc: proto in, one domain call, proto out."""

from __future__ import annotations

from typing import Any

import grpc

from message_svc.accounts import Accounts, platform_of
from message_svc.contacts import Contacts
from message_svc.deletion import Deletion
from message_svc.messaging import Messaging
from natter import convert
from natter import domain as d
from natter.errors import NotFound
from natter.rpc import bearer, client_address
from natter.v1 import account_service_pb2 as apb
from natter.v1 import account_service_pb2_grpc as apb_grpc
from natter.v1 import contact_service_pb2 as cpb
from natter.v1 import contact_service_pb2_grpc as cpb_grpc
from natter.v1 import message_internal_service_pb2 as mpb
from natter.v1 import message_internal_service_pb2_grpc as mpb_grpc
from natter.v1 import thread_service_pb2 as tpb
from natter.v1 import thread_service_pb2_grpc as tpb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class _Authed:
    accounts: Accounts

    async def who(self, context: Context) -> d.Principal:
        return await self.accounts.authenticate(bearer(context.invocation_metadata()))


POLICY = {
    "open": apb.REGISTRATION_POLICY_OPEN,
    "invite": apb.REGISTRATION_POLICY_INVITE,
    "closed": apb.REGISTRATION_POLICY_CLOSED,
}


def _user_agent(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key in ("x-natter-user-agent", "user-agent"):
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


class AccountServicer(_Authed, apb_grpc.AccountServiceServicer):
    def __init__(self, accounts: Accounts, deletion: Deletion) -> None:
        self.accounts = accounts
        self.deletion = deletion

    async def Register(
        self, request: apb.RegisterRequest, context: Context
    ) -> apb.RegisterResponse:
        made = await self.accounts.register(
            request.username,
            request.display_name,
            request.phone,
            request.password,
            invite_code=request.invite_code,
            address=client_address.get(),
        )
        return apb.RegisterResponse(user=convert.user(made.user), is_admin=made.is_admin)

    async def Login(self, request: apb.LoginRequest, context: Context) -> apb.LoginResponse:
        done = await self.accounts.login(
            request.username,
            request.password,
            request.device_name,
            platform=platform_of(request.platform, _user_agent(context)),
            replace_oldest=request.replace_oldest_device,
            address=client_address.get(),
            token=bearer(context.invocation_metadata()),
        )
        return apb.LoginResponse(
            user=convert.user(done.user),
            device_id=done.device_id,
            token=done.token,
            replaced_device_ids=list(done.replaced),
            expire_time=convert.ts(done.expire_time),
        )

    async def Logout(self, request: apb.LogoutRequest, context: Context) -> apb.LogoutResponse:
        await self.accounts.logout(await self.who(context))
        return apb.LogoutResponse()

    async def ListDevices(
        self, request: apb.ListDevicesRequest, context: Context
    ) -> apb.ListDevicesResponse:
        devices = await self.accounts.devices(await self.who(context))
        return apb.ListDevicesResponse(devices=[convert.device(x) for x in devices])

    async def GetMe(self, request: apb.GetMeRequest, context: Context) -> apb.GetMeResponse:
        me = await self.accounts.me(await self.who(context))
        return apb.GetMeResponse(
            user=convert.user(me.user),
            device_id=me.device_id,
            phone=me.phone,
            hide_last_seen=me.hide_last_seen,
            notification_preview=convert.preview(me.notification_preview),
            is_admin=me.is_admin,
        )

    async def UpdateSettings(
        self, request: apb.UpdateSettingsRequest, context: Context
    ) -> apb.UpdateSettingsResponse:
        await self.accounts.update_settings(
            await self.who(context),
            request.display_name if request.HasField("display_name") else None,
            request.hide_last_seen if request.HasField("hide_last_seen") else None,
            convert.requested_preview(request.notification_preview)
            if request.HasField("notification_preview")
            else None,
            request.about if request.HasField("about") else None,
            request.picture_id if request.HasField("picture_id") else None,
        )
        return apb.UpdateSettingsResponse()

    async def ChangePassword(
        self, request: apb.ChangePasswordRequest, context: Context
    ) -> apb.ChangePasswordResponse:
        revoked = await self.accounts.change_password(
            await self.who(context),
            request.current_password,
            request.new_password,
            request.keep_other_devices,
        )
        return apb.ChangePasswordResponse(revoked_device_ids=revoked)

    async def RevokeDevice(
        self, request: apb.RevokeDeviceRequest, context: Context
    ) -> apb.RevokeDeviceResponse:
        await self.accounts.revoke_device(await self.who(context), request.device_id)
        return apb.RevokeDeviceResponse()

    async def RevokeOtherDevices(
        self, request: apb.RevokeOtherDevicesRequest, context: Context
    ) -> apb.RevokeOtherDevicesResponse:
        revoked = await self.accounts.revoke_other_devices(await self.who(context))
        return apb.RevokeOtherDevicesResponse(revoked_device_ids=revoked)

    async def DeleteAccount(
        self, request: apb.DeleteAccountRequest, context: Context
    ) -> apb.DeleteAccountResponse:
        await self.deletion.delete_own(await self.who(context), request.password)
        return apb.DeleteAccountResponse()

    async def GetRegistrationPolicy(
        self, request: apb.GetRegistrationPolicyRequest, context: Context
    ) -> apb.GetRegistrationPolicyResponse:
        policy, _ = await self.accounts.policy()
        return apb.GetRegistrationPolicyResponse(policy=POLICY[policy])


class ContactServicer(_Authed, cpb_grpc.ContactServiceServicer):
    def __init__(self, accounts: Accounts, contacts: Contacts) -> None:
        self.accounts = accounts
        self.contacts = contacts

    async def AddContact(
        self, request: cpb.AddContactRequest, context: Context
    ) -> cpb.AddContactResponse:
        c = await self.contacts.add(await self.who(context), request.username, request.alias)
        return cpb.AddContactResponse(contact=convert.contact(c))

    async def RemoveContact(
        self, request: cpb.RemoveContactRequest, context: Context
    ) -> cpb.RemoveContactResponse:
        await self.contacts.remove(await self.who(context), request.username)
        return cpb.RemoveContactResponse()

    async def ListContacts(
        self, request: cpb.ListContactsRequest, context: Context
    ) -> cpb.ListContactsResponse:
        items, token = await self.contacts.page(
            await self.who(context), request.page_size, request.page_token
        )
        return cpb.ListContactsResponse(
            contacts=[convert.contact(c) for c in items],
            next_page_token=token,
        )

    async def DiscoverContacts(
        self, request: cpb.DiscoverContactsRequest, context: Context
    ) -> cpb.DiscoverContactsResponse:
        found = await self.contacts.discover(await self.who(context), list(request.identifiers))
        return cpb.DiscoverContactsResponse(
            found=[cpb.DiscoveredUser(identifier=i, user=convert.user(u)) for i, u in found]
        )


class ThreadServicer(_Authed, tpb_grpc.ThreadServiceServicer):
    def __init__(self, accounts: Accounts, messaging: Messaging) -> None:
        self.accounts = accounts
        self.messaging = messaging

    async def ListThreads(
        self, request: tpb.ListThreadsRequest, context: Context
    ) -> tpb.ListThreadsResponse:
        threads, token = await self.messaging.list_threads(
            await self.who(context), request.page_size, request.page_token
        )
        return tpb.ListThreadsResponse(
            threads=[convert.thread(t) for t in threads], next_page_token=token
        )

    async def GetThread(
        self, request: tpb.GetThreadRequest, context: Context
    ) -> tpb.GetThreadResponse:
        thread, members = await self.messaging.get_thread(
            await self.who(context), request.thread_id
        )
        return tpb.GetThreadResponse(
            thread=convert.thread(thread), members=[convert.member(m) for m in members]
        )

    async def GetDirectThread(
        self, request: tpb.GetDirectThreadRequest, context: Context
    ) -> tpb.GetDirectThreadResponse:
        thread = await self.messaging.direct_thread(await self.who(context), request.username)
        return tpb.GetDirectThreadResponse(thread=convert.thread(thread))

    async def ListMessages(
        self, request: tpb.ListMessagesRequest, context: Context
    ) -> tpb.ListMessagesResponse:
        rows, more = await self.messaging.list_messages(
            await self.who(context),
            request.thread_id,
            request.before_seq,
            request.after_seq,
            request.limit,
            request.forward,
            request.folded,
        )
        return tpb.ListMessagesResponse(messages=[convert.message(m) for m in rows], more=more)

    async def MuteThread(
        self, request: tpb.MuteThreadRequest, context: Context
    ) -> tpb.MuteThreadResponse:
        thread = await self.messaging.mute(
            await self.who(context), request.thread_id, convert.requested_mute(request)
        )
        return tpb.MuteThreadResponse(thread=convert.thread(thread))

    async def UnmuteThread(
        self, request: tpb.UnmuteThreadRequest, context: Context
    ) -> tpb.UnmuteThreadResponse:
        thread = await self.messaging.unmute(await self.who(context), request.thread_id)
        return tpb.UnmuteThreadResponse(thread=convert.thread(thread))

    async def SearchMessages(
        self, request: tpb.SearchMessagesRequest, context: Context
    ) -> tpb.SearchMessagesResponse:
        rows, token = await self.messaging.search(
            await self.who(context),
            request.query,
            request.thread_id,
            request.page_size,
            request.page_token,
        )
        return tpb.SearchMessagesResponse(
            messages=[convert.message(m) for m in rows], next_page_token=token
        )

    async def HideMessages(
        self, request: tpb.HideMessagesRequest, context: Context
    ) -> tpb.HideMessagesResponse:
        changes = await self.messaging.hide(
            await self.who(context), request.thread_id, list(request.seqs)
        )
        return tpb.HideMessagesResponse(changes=[convert.user_change(c) for c in changes])

    async def ListUserChanges(
        self, request: tpb.ListUserChangesRequest, context: Context
    ) -> tpb.ListUserChangesResponse:
        changes, more = await self.messaging.user_changes(
            await self.who(context), request.after_seq, request.limit
        )
        return tpb.ListUserChangesResponse(
            changes=[convert.user_change(c) for c in changes], more=more
        )


class MessageInternalServicer(mpb_grpc.MessageInternalServiceServicer):
    """Trusted callers only (internal listener): identities come from socket servers."""

    def __init__(self, accounts: Accounts, messaging: Messaging) -> None:
        self.accounts = accounts
        self.messaging = messaging

    async def _who(self, user_id: int, device_id: int) -> d.Principal:
        user = await self.messaging.acting_user(user_id)
        if user is None:
            raise NotFound(f"user {user_id} does not exist")
        return d.Principal(user, device_id)

    async def CheckDevices(
        self, request: mpb.CheckDevicesRequest, context: Context
    ) -> mpb.CheckDevicesResponse:
        valid = await self.accounts.renew(list(request.device_ids))
        return mpb.CheckDevicesResponse(valid_device_ids=sorted(valid))

    async def Authenticate(
        self, request: mpb.AuthenticateRequest, context: Context
    ) -> mpb.AuthenticateResponse:
        who = await self.accounts.authenticate(request.token)
        return mpb.AuthenticateResponse(user=convert.user(who.user), device_id=who.device_id)

    async def SendMessage(
        self, request: mpb.SendMessageRequest, context: Context
    ) -> mpb.SendMessageResponse:
        res = await self.messaging.send(
            await self._who(request.user_id, request.device_id),
            convert.send_request_of(request.send),
        )
        return mpb.SendMessageResponse(result=convert.send_result(res))

    async def SendMessages(
        self, request: mpb.SendMessagesRequest, context: Context
    ) -> mpb.SendMessagesResponse:
        outcomes = await self.messaging.send_many(
            await self._who(request.user_id, request.device_id),
            [convert.send_request_of(s) for s in request.sends],
            request.origin_address,
        )
        return mpb.SendMessagesResponse(
            outcomes=[
                convert.send_outcome(o, s.client_msg_id)
                for o, s in zip(outcomes, request.sends, strict=True)
            ]
        )

    async def SyncDevice(
        self, request: mpb.SyncDeviceRequest, context: Context
    ) -> mpb.SyncDeviceResponse:
        page, starts = await self.messaging.sync_device(
            await self._who(request.user_id, request.device_id),
            [convert.cursor_of(c) for c in request.cursors],
            request.skip_replay,
            request.limit,
        )
        return mpb.SyncDeviceResponse(
            messages=[convert.message(m) for m in page.messages],
            more=page.more,
            starts=[convert.cursor(c) for c in starts],
        )

    async def ReadGap(self, request: mpb.ReadGapRequest, context: Context) -> mpb.ReadGapResponse:
        rows = await self.messaging.messages_between(
            await self._who(request.user_id, request.device_id),
            request.thread_id,
            request.after_seq,
            request.before_seq,
        )
        return mpb.ReadGapResponse(messages=[convert.message(m) for m in rows])

    async def CheckMember(
        self, request: mpb.CheckMemberRequest, context: Context
    ) -> mpb.CheckMemberResponse:
        await self.messaging.check_member(await self._who(request.user_id, 0), request.thread_id)
        return mpb.CheckMemberResponse()

    async def AckCursors(
        self, request: mpb.AckCursorsRequest, context: Context
    ) -> mpb.AckCursorsResponse:
        await self.messaging.ack([convert.device_ack_of(a) for a in request.acks])
        return mpb.AckCursorsResponse()

    async def MarkRead(
        self, request: mpb.MarkReadRequest, context: Context
    ) -> mpb.MarkReadResponse:
        await self.messaging.mark_read(
            await self._who(request.user_id, request.device_id), convert.cursor_of(request.cursor)
        )
        return mpb.MarkReadResponse()

    async def RelayTyping(
        self, request: mpb.RelayTypingRequest, context: Context
    ) -> mpb.RelayTypingResponse:
        await self.messaging.relay_typing(
            await self._who(request.user_id, request.device_id),
            request.typing.thread_id,
            request.typing.active,
        )
        return mpb.RelayTypingResponse()

    async def ListUserChanges(
        self, request: mpb.MessageInternalServiceListUserChangesRequest, context: Context
    ) -> mpb.MessageInternalServiceListUserChangesResponse:
        changes, more = await self.messaging.user_changes(
            await self._who(request.user_id, 0), request.after_seq, request.limit
        )
        return mpb.MessageInternalServiceListUserChangesResponse(
            changes=[convert.user_change(c) for c in changes], more=more
        )

    async def ListUserGroups(
        self, request: mpb.ListUserGroupsRequest, context: Context
    ) -> mpb.ListUserGroupsResponse:
        return mpb.ListUserGroupsResponse(
            thread_ids=await self.messaging.user_groups(request.user_id)
        )
