"""MessageApi over gRPC: what a socket server in another process uses to reach message_svc."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from natter import convert
from natter import domain as d
from natter.errors import NatterError
from natter.pool import Pool
from natter.v1 import message_internal_service_pb2 as mpb
from natter.v1 import message_internal_service_pb2_grpc as mpb_grpc
from natter.v1 import socket_service_pb2 as spb

# Sends get this many times the pool's deadline. A send whose deadline passes is not undone:
# its transaction goes on and commits, and the device then sends the run again, so a deadline
# too tight for a slow link (a database 200 ms away: several round trips per transaction)
# makes every send be stored, refused and sent again, and the work grows as it falls behind.
# A replica that cannot reach its database fails at once instead (DATABASE_UNREACHABLE).
SEND_DEADLINE = 3


def _conversation(who: d.Principal, req: d.SendRequest) -> str:
    """The replica key of a send: one replica per conversation while it is up.

    Its pushes then leave in commit order, so devices need not fetch gaps.
    """
    if req.recipient:
        return "|".join(sorted((who.user.username, req.recipient.strip().lower())))
    return f"thread:{req.thread_id}"


class MessageClient:
    """Any message_svc replica will do: calls go to one, UNAVAILABLE moves them to the next."""

    def __init__(self, pool: Pool, addresses: Callable[[], Sequence[str]]) -> None:
        self.pool = pool
        self.addresses = addresses

    def _stub(self, channel: grpc.aio.Channel) -> mpb_grpc.MessageInternalServiceAsyncStub:
        return self.pool.stub(channel, mpb_grpc.MessageInternalServiceStub)

    async def authenticate(self, token: str) -> d.Principal:
        async def go(ch: grpc.aio.Channel) -> mpb.AuthenticateResponse:
            return await self._stub(ch).Authenticate(
                mpb.AuthenticateRequest(token=token),
                metadata=self.pool.metadata,
                timeout=self.pool.deadline,
            )

        res = await self.pool.call(self.addresses, go)
        return d.Principal(convert.user_of(res.user), res.device_id)

    async def check_devices(self, device_ids: Sequence[int]) -> set[int]:
        async def go(ch: grpc.aio.Channel) -> mpb.CheckDevicesResponse:
            return await self._stub(ch).CheckDevices(
                mpb.CheckDevicesRequest(device_ids=list(device_ids)),
                metadata=self.pool.metadata,
                timeout=self.pool.deadline,
            )

        res = await self.pool.call(self.addresses, go)
        return set(res.valid_device_ids)

    async def send(self, who: d.Principal, req: d.SendRequest) -> d.SendResult:
        request = mpb.SendMessageRequest(
            user_id=who.user.user_id, device_id=who.device_id, send=convert.send(req)
        )

        async def go(ch: grpc.aio.Channel) -> mpb.SendMessageResponse:
            return await self._stub(ch).SendMessage(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline * SEND_DEADLINE
            )

        res = await self.pool.call(self.addresses, go, key=_conversation(who, req))
        return convert.send_result_of(res.result)

    async def send_many(
        self, who: d.Principal, reqs: Sequence[d.SendRequest], origin: str = ""
    ) -> list[d.SendResult | NatterError]:
        """One call for a run of one device's sends: one replica stores them, in order."""
        if not reqs:
            return []
        request = mpb.SendMessagesRequest(
            user_id=who.user.user_id,
            device_id=who.device_id,
            sends=[convert.send(r) for r in reqs],
            origin_address=origin,
        )

        async def go(ch: grpc.aio.Channel) -> mpb.SendMessagesResponse:
            return await self._stub(ch).SendMessages(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline * SEND_DEADLINE
            )

        # Retrying a run is safe (client_msg_id makes every send idempotent), and so is
        # moving it to another replica: each send stores once, in the run's order.
        res = await self.pool.call(self.addresses, go, key=_conversation(who, reqs[0]))
        return [convert.send_outcome_of(o) for o in res.outcomes]

    async def sync_device(
        self, who: d.Principal, cursors: Sequence[d.Cursor], skip_replay: bool, limit: int
    ) -> tuple[d.SyncPage, list[d.Cursor]]:
        request = mpb.SyncDeviceRequest(
            user_id=who.user.user_id,
            device_id=who.device_id,
            cursors=[convert.cursor(c) for c in cursors],
            skip_replay=skip_replay,
            limit=limit,
        )

        async def go(ch: grpc.aio.Channel) -> mpb.SyncDeviceResponse:
            return await self._stub(ch).SyncDevice(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline * 4
            )

        res = await self.pool.call(self.addresses, go)
        page = d.SyncPage([convert.message_of(m) for m in res.messages], res.more)
        return page, [convert.cursor_of(c) for c in res.starts]

    async def messages_between(
        self, who: d.Principal, thread_id: int, after_seq: int, before_seq: int
    ) -> list[d.Message]:
        request = mpb.ReadGapRequest(
            user_id=who.user.user_id,
            device_id=who.device_id,
            thread_id=thread_id,
            after_seq=after_seq,
            before_seq=before_seq,
        )

        async def go(ch: grpc.aio.Channel) -> mpb.ReadGapResponse:
            return await self._stub(ch).ReadGap(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline
            )

        res = await self.pool.call(self.addresses, go)
        return [convert.message_of(m) for m in res.messages]

    async def check_member(self, who: d.Principal, thread_id: int) -> None:
        request = mpb.CheckMemberRequest(user_id=who.user.user_id, thread_id=thread_id)

        async def go(ch: grpc.aio.Channel) -> mpb.CheckMemberResponse:
            return await self._stub(ch).CheckMember(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline
            )

        await self.pool.call(self.addresses, go)

    async def ack(self, acks: Sequence[d.DeviceAck]) -> None:
        request = mpb.AckCursorsRequest(acks=[convert.device_ack(a) for a in acks])

        async def go(ch: grpc.aio.Channel) -> mpb.AckCursorsResponse:
            return await self._stub(ch).AckCursors(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline
            )

        await self.pool.call(self.addresses, go)

    async def mark_read(self, who: d.Principal, cursor: d.Cursor) -> None:
        request = mpb.MarkReadRequest(
            user_id=who.user.user_id, device_id=who.device_id, cursor=convert.cursor(cursor)
        )

        async def go(ch: grpc.aio.Channel) -> mpb.MarkReadResponse:
            return await self._stub(ch).MarkRead(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline
            )

        await self.pool.call(self.addresses, go)

    async def relay_typing(self, who: d.Principal, thread_id: int, active: bool) -> None:
        request = mpb.RelayTypingRequest(
            user_id=who.user.user_id,
            device_id=who.device_id,
            typing=spb.TypingRequest(thread_id=thread_id, active=active),
        )

        async def go(ch: grpc.aio.Channel) -> mpb.RelayTypingResponse:
            return await self._stub(ch).RelayTyping(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline
            )

        await self.pool.call(self.addresses, go)

    async def user_groups(self, user_id: int) -> list[int]:
        async def go(ch: grpc.aio.Channel) -> mpb.ListUserGroupsResponse:
            return await self._stub(ch).ListUserGroups(
                mpb.ListUserGroupsRequest(user_id=user_id),
                metadata=self.pool.metadata,
                timeout=self.pool.deadline,
            )

        return list((await self.pool.call(self.addresses, go)).thread_ids)

    async def user_changes(
        self, who: d.Principal, after_seq: int, limit: int
    ) -> tuple[list[d.UserChange], bool]:
        request = mpb.MessageInternalServiceListUserChangesRequest(
            user_id=who.user.user_id, after_seq=after_seq, limit=limit
        )

        async def go(ch: grpc.aio.Channel) -> mpb.MessageInternalServiceListUserChangesResponse:
            return await self._stub(ch).ListUserChanges(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline
            )

        res = await self.pool.call(self.addresses, go)
        return [convert.user_change_of(c) for c in res.changes], res.more
