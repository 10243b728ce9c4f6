"""message_svc assembled: the domain objects over one store, served in-process or over gRPC."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from message_svc.accounts import Accounts
from message_svc.admin import Admin
from message_svc.admin_servicer import AdminServicer
from message_svc.contacts import Contacts
from message_svc.deletion import Deletion
from message_svc.group_servicer import GroupServicer
from message_svc.groups import Groups
from message_svc.messaging import Messaging
from message_svc.ports import DeviceRevocations, Fanout
from message_svc.safety import Safety
from message_svc.safety_servicer import SafetyServicer
from message_svc.servicer import (
    AccountServicer,
    ContactServicer,
    MessageInternalServicer,
    ThreadServicer,
)
from message_svc.store import Store
from natter.domain import (
    Cursor,
    DeviceAck,
    Message,
    Principal,
    SendRequest,
    SendResult,
    SyncPage,
    UserChange,
)
from natter.errors import NatterError
from natter.metrics import NO_METRICS, Metrics
from natter.settings import Settings
from natter.v1 import account_service_pb2_grpc as apb_grpc
from natter.v1 import admin_service_pb2_grpc as adpb_grpc
from natter.v1 import contact_service_pb2_grpc as cpb_grpc
from natter.v1 import group_service_pb2_grpc as gpb_grpc
from natter.v1 import message_internal_service_pb2_grpc as mpb_grpc
from natter.v1 import safety_service_pb2_grpc as spb_grpc
from natter.v1 import thread_service_pb2_grpc as tpb_grpc

PUBLIC_SERVICES = (
    "natter.v1.AccountService",
    "natter.v1.ContactService",
    "natter.v1.ThreadService",
    "natter.v1.GroupService",
    "natter.v1.SafetyService",
    "natter.v1.AdminService",
)


class MessageService:
    """The MessageApi in-process: what a socket server in the same process calls directly."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        fanout: Fanout,
        metrics: Metrics = NO_METRICS,
        revocations: Sequence[DeviceRevocations] = (),
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.accounts = Accounts(store, settings, fanout, metrics, revocations)
        self.contacts = Contacts(store, self.accounts.profiles)
        self.messaging = Messaging(store, settings, fanout, self.contacts, metrics)
        self.groups = Groups(store, settings, fanout, self.messaging, self.contacts)
        self.safety = Safety(store, settings, self.contacts, self.messaging)
        self.deletion = Deletion(store, self.accounts, self.groups, self.messaging)
        self.admin = Admin(store, settings, self.accounts, self.contacts, self.deletion)

    def add_public(self, server: grpc.aio.Server) -> None:
        apb_grpc.add_AccountServiceServicer_to_server(
            AccountServicer(self.accounts, self.deletion), server
        )
        spb_grpc.add_SafetyServiceServicer_to_server(
            SafetyServicer(self.accounts, self.safety), server
        )
        adpb_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.accounts, self.admin), server
        )
        cpb_grpc.add_ContactServiceServicer_to_server(
            ContactServicer(self.accounts, self.contacts), server
        )
        tpb_grpc.add_ThreadServiceServicer_to_server(
            ThreadServicer(self.accounts, self.messaging), server
        )
        gpb_grpc.add_GroupServiceServicer_to_server(
            GroupServicer(self.accounts, self.groups), server
        )

    def add_internal(self, server: grpc.aio.Server) -> None:
        mpb_grpc.add_MessageInternalServiceServicer_to_server(
            MessageInternalServicer(self.accounts, self.messaging), server
        )

    async def authenticate(self, token: str) -> Principal:
        return await self.accounts.authenticate(token)

    async def check_devices(self, device_ids: Sequence[int]) -> set[int]:
        return await self.accounts.renew(device_ids)

    async def send(self, who: Principal, req: SendRequest) -> SendResult:
        return await self.messaging.send(who, req)

    async def send_many(
        self, who: Principal, reqs: Sequence[SendRequest], origin: str = ""
    ) -> list[SendResult | NatterError]:
        return await self.messaging.send_many(who, reqs, origin)

    async def sync_device(
        self, who: Principal, cursors: Sequence[Cursor], skip_replay: bool, limit: int
    ) -> tuple[SyncPage, list[Cursor]]:
        return await self.messaging.sync_device(who, cursors, skip_replay, limit)

    async def messages_between(
        self, who: Principal, thread_id: int, after_seq: int, before_seq: int
    ) -> list[Message]:
        return await self.messaging.messages_between(who, thread_id, after_seq, before_seq)

    async def check_member(self, who: Principal, thread_id: int) -> None:
        await self.messaging.check_member(who, thread_id)

    async def ack(self, acks: Sequence[DeviceAck]) -> None:
        await self.messaging.ack(acks)

    async def mark_read(self, who: Principal, cursor: Cursor) -> None:
        await self.messaging.mark_read(who, cursor)

    async def relay_typing(self, who: Principal, thread_id: int, active: bool) -> None:
        await self.messaging.relay_typing(who, thread_id, active)

    async def user_groups(self, user_id: int) -> list[int]:
        return await self.messaging.user_groups(user_id)

    async def user_changes(
        self, who: Principal, after_seq: int, limit: int
    ) -> tuple[list[UserChange], bool]:
        return await self.messaging.user_changes(who, after_seq, limit)
