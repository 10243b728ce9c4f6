"""Thin gRPC servicer of GroupService: proto in, one Groups call, proto out."""

from __future__ import annotations

from typing import Any

import grpc

from message_svc.accounts import Accounts
from message_svc.groups import Groups
from message_svc.servicer import _Authed
from natter import convert
from natter.v1 import group_service_pb2 as gpb
from natter.v1 import group_service_pb2_grpc as gpb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class GroupServicer(_Authed, gpb_grpc.GroupServiceServicer):
    def __init__(self, accounts: Accounts, groups: Groups) -> None:
        self.accounts = accounts
        self.groups = groups

    async def CreateGroup(
        self, request: gpb.CreateGroupRequest, context: Context
    ) -> gpb.CreateGroupResponse:
        thread = await self.groups.create(
            await self.who(context), request.title, list(request.members)
        )
        return gpb.CreateGroupResponse(thread=convert.thread(thread))

    async def RenameGroup(
        self, request: gpb.RenameGroupRequest, context: Context
    ) -> gpb.RenameGroupResponse:
        message = await self.groups.rename(
            await self.who(context), request.thread_id, request.title
        )
        return gpb.RenameGroupResponse(message=convert.message(message))

    async def AddMembers(
        self, request: gpb.AddMembersRequest, context: Context
    ) -> gpb.AddMembersResponse:
        message = await self.groups.add(
            await self.who(context), request.thread_id, list(request.members)
        )
        return gpb.AddMembersResponse(message=convert.message(message))

    async def RemoveMembers(
        self, request: gpb.RemoveMembersRequest, context: Context
    ) -> gpb.RemoveMembersResponse:
        message = await self.groups.remove(
            await self.who(context), request.thread_id, list(request.members)
        )
        return gpb.RemoveMembersResponse(message=convert.message(message))

    async def SetMemberRole(
        self, request: gpb.SetMemberRoleRequest, context: Context
    ) -> gpb.SetMemberRoleResponse:
        message = await self.groups.set_role(
            await self.who(context),
            request.thread_id,
            list(request.members),
            convert.requested_role(request.role),
        )
        return gpb.SetMemberRoleResponse(message=convert.message(message))

    async def LeaveGroup(
        self, request: gpb.LeaveGroupRequest, context: Context
    ) -> gpb.LeaveGroupResponse:
        await self.groups.leave(await self.who(context), request.thread_id)
        return gpb.LeaveGroupResponse()
