"""What a socket server needs from message_svc, in-process or over gRPC (a port it owns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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


class MessageApi(Protocol):
    """message_svc as a socket server sees it: MessageService in-process, MessageClient over gRPC."""

    async def authenticate(self, token: str) -> Principal: ...
    async def check_devices(self, device_ids: Sequence[int]) -> set[int]:
        """Which of these devices are still logged in (each is renewed as in use)."""
        ...

    async def send_many(
        self, who: Principal, reqs: Sequence[SendRequest], origin: str = ""
    ) -> list[SendResult | NatterError]:
        """Store a run of one device's sends in order, durable on return.

        `origin` names the caller in message_svc's fan-out when it pushes the sender's own
        copies to the devices it holds itself: message_svc does not push them there.
        """
        ...

    async def sync_device(
        self, who: Principal, cursors: Sequence[Cursor], skip_replay: bool, limit: int
    ) -> tuple[SyncPage, list[Cursor]]: ...
    async def messages_between(
        self, who: Principal, thread_id: int, after_seq: int, before_seq: int
    ) -> list[Message]: ...
    async def check_member(self, who: Principal, thread_id: int) -> None: ...
    async def ack(self, acks: Sequence[DeviceAck]) -> None: ...
    async def mark_read(self, who: Principal, cursor: Cursor) -> None: ...
    async def relay_typing(self, who: Principal, thread_id: int, active: bool) -> None: ...
    async def user_groups(self, user_id: int) -> list[int]: ...
    async def user_changes(
        self, who: Principal, after_seq: int, limit: int
    ) -> tuple[list[UserChange], bool]: ...
