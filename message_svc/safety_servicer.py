"""Thin gRPC servicer of SafetyService: block, unblock, list blocked, report."""

from __future__ import annotations

from typing import Any

import grpc

from message_svc.accounts import Accounts
from message_svc.safety import Safety
from natter import convert
from natter.rpc import bearer
from natter.v1 import safety_service_pb2 as spb
from natter.v1 import safety_service_pb2_grpc as spb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class SafetyServicer(spb_grpc.SafetyServiceServicer):
    def __init__(self, accounts: Accounts, safety: Safety) -> None:
        self.accounts = accounts
        self.safety = safety

    async def _who(self, context: Context) -> Any:
        return await self.accounts.authenticate(bearer(context.invocation_metadata()))

    async def BlockUser(
        self, request: spb.BlockUserRequest, context: Context
    ) -> spb.BlockUserResponse:
        user = await self.safety.block(await self._who(context), request.username)
        return spb.BlockUserResponse(user=convert.user(user))

    async def UnblockUser(
        self, request: spb.UnblockUserRequest, context: Context
    ) -> spb.UnblockUserResponse:
        await self.safety.unblock(await self._who(context), request.username)
        return spb.UnblockUserResponse()

    async def ListBlockedUsers(
        self, request: spb.ListBlockedUsersRequest, context: Context
    ) -> spb.ListBlockedUsersResponse:
        users, token = await self.safety.blocked(
            await self._who(context), request.page_size, request.page_token
        )
        return spb.ListBlockedUsersResponse(
            users=[convert.user(u) for u in users], next_page_token=token
        )

    async def CreateReport(
        self, request: spb.CreateReportRequest, context: Context
    ) -> spb.CreateReportResponse:
        report_id = await self.safety.report(
            await self._who(context),
            request.username,
            request.thread_id,
            list(request.seqs),
            int(request.reason),
            request.text,
            request.block,
        )
        return spb.CreateReportResponse(report_id=report_id)
