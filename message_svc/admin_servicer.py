"""Thin gRPC servicer of AdminService (admins' tokens only), with its row conversions."""

from __future__ import annotations

from typing import Any

import grpc

from message_svc.accounts import Accounts, public
from message_svc.admin import Actor, Admin
from message_svc.servicer import POLICY
from message_svc.store import DeviceRow, InviteRow, ReportRow, UserRow
from natter import convert
from natter import domain as d
from natter.errors import InvalidArgument
from natter.rpc import bearer
from natter.v1 import account_service_pb2 as apb
from natter.v1 import admin_service_pb2 as adpb
from natter.v1 import admin_service_pb2_grpc as adpb_grpc
from natter.v1 import types_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]
POLICY_NAME = {number: name for name, number in POLICY.items()}


def account(row: UserRow) -> adpb.Account:
    return adpb.Account(
        user=convert.user(public(row)),
        phone=row.phone or "",
        is_admin=row.is_admin,
        disabled=row.disabled,
        create_time=convert.ts(row.create_time),
        last_seen_time=convert.ts(row.last_seen_time),
    )


def device(row: DeviceRow) -> pb.Device:
    return convert.device(
        d.Device(
            row.device_id,
            row.name,
            row.create_time,
            row.last_active_time,
            False,
            row.platform,
            row.expire_time,
        )
    )


def invite(row: InviteRow) -> adpb.Invite:
    return adpb.Invite(
        hint=row.hint,
        note=row.note,
        create_time=convert.ts(row.create_time),
        expire_time=convert.ts(row.expire_time),
        use_time=convert.ts(row.use_time),
        used_by_user_id=row.used_by_id or 0,
        revoke_time=convert.ts(row.revoke_time),
    )


def report(row: ReportRow) -> adpb.Report:
    return adpb.Report(
        report_id=row.report_id,
        reporter=convert.user(row.reporter),
        subject=convert.user(row.subject),
        thread_id=row.thread_id,
        reason=row.reason,  # type: ignore[arg-type]
        text=row.text,
        create_time=convert.ts(row.create_time),
        resolve_time=convert.ts(row.resolve_time),
        resolution=row.resolution,
        messages=[convert.message(m) for m in row.messages],
    )


def policy_of(value: apb.RegistrationPolicy.ValueType) -> str:
    name = POLICY_NAME.get(value)
    if name is None:
        raise InvalidArgument(f"policy must be OPEN, INVITE or CLOSED, not {value}", "BAD_POLICY")
    return name


class AdminServicer(adpb_grpc.AdminServiceServicer):
    def __init__(self, accounts: Accounts, admin: Admin) -> None:
        self.accounts = accounts
        self.admin = admin

    async def _actor(self, context: Context) -> Actor:
        who = await self.accounts.authenticate(bearer(context.invocation_metadata()))
        return await self.admin.actor(who)

    async def ListUsers(
        self, request: adpb.ListUsersRequest, context: Context
    ) -> adpb.ListUsersResponse:
        rows, token = await self.admin.users(
            await self._actor(context), request.query, request.page_size, request.page_token
        )
        return adpb.ListUsersResponse(accounts=[account(r) for r in rows], next_page_token=token)

    async def GetUser(self, request: adpb.GetUserRequest, context: Context) -> adpb.GetUserResponse:
        row, devices = await self.admin.user(await self._actor(context), request.username)
        return adpb.GetUserResponse(account=account(row), devices=[device(x) for x in devices])

    async def CreateUser(
        self, request: adpb.CreateUserRequest, context: Context
    ) -> adpb.CreateUserResponse:
        row = await self.admin.create_user(
            await self._actor(context),
            request.username,
            request.display_name,
            request.phone,
            request.password,
            request.is_admin,
        )
        return adpb.CreateUserResponse(account=account(row))

    async def SetUserDisabled(
        self, request: adpb.SetUserDisabledRequest, context: Context
    ) -> adpb.SetUserDisabledResponse:
        revoked = await self.admin.set_disabled(
            await self._actor(context), request.username, request.disabled
        )
        return adpb.SetUserDisabledResponse(revoked_device_ids=revoked)

    async def DeleteUser(
        self, request: adpb.DeleteUserRequest, context: Context
    ) -> adpb.DeleteUserResponse:
        await self.admin.delete_user(await self._actor(context), request.username)
        return adpb.DeleteUserResponse()

    async def ResetPassword(
        self, request: adpb.ResetPasswordRequest, context: Context
    ) -> adpb.ResetPasswordResponse:
        password, revoked = await self.admin.reset_password(
            await self._actor(context), request.username, request.new_password
        )
        return adpb.ResetPasswordResponse(password=password, revoked_device_ids=revoked)

    async def SetUserAdmin(
        self, request: adpb.SetUserAdminRequest, context: Context
    ) -> adpb.SetUserAdminResponse:
        await self.admin.set_admin(await self._actor(context), request.username, request.is_admin)
        return adpb.SetUserAdminResponse()

    async def RevokeUserDevices(
        self, request: adpb.RevokeUserDevicesRequest, context: Context
    ) -> adpb.RevokeUserDevicesResponse:
        revoked = await self.admin.revoke_devices(
            await self._actor(context), request.username, list(request.device_ids)
        )
        return adpb.RevokeUserDevicesResponse(revoked_device_ids=revoked)

    async def CreateInvites(
        self, request: adpb.CreateInvitesRequest, context: Context
    ) -> adpb.CreateInvitesResponse:
        codes, expire = await self.admin.create_invites(
            await self._actor(context), request.count, request.note, request.valid_seconds
        )
        return adpb.CreateInvitesResponse(codes=codes, expire_time=convert.ts(expire))

    async def ListInvites(
        self, request: adpb.ListInvitesRequest, context: Context
    ) -> adpb.ListInvitesResponse:
        rows, token = await self.admin.invites(
            await self._actor(context), request.include_done, request.page_size, request.page_token
        )
        return adpb.ListInvitesResponse(invites=[invite(r) for r in rows], next_page_token=token)

    async def RevokeInvite(
        self, request: adpb.RevokeInviteRequest, context: Context
    ) -> adpb.RevokeInviteResponse:
        await self.admin.revoke_invite(await self._actor(context), request.hint)
        return adpb.RevokeInviteResponse()

    async def ListReports(
        self, request: adpb.ListReportsRequest, context: Context
    ) -> adpb.ListReportsResponse:
        rows, token = await self.admin.reports(
            await self._actor(context),
            request.include_resolved,
            request.page_size,
            request.page_token,
        )
        return adpb.ListReportsResponse(reports=[report(r) for r in rows], next_page_token=token)

    async def GetReport(
        self, request: adpb.GetReportRequest, context: Context
    ) -> adpb.GetReportResponse:
        row = await self.admin.report(await self._actor(context), request.report_id)
        return adpb.GetReportResponse(report=report(row))

    async def ResolveReport(
        self, request: adpb.ResolveReportRequest, context: Context
    ) -> adpb.ResolveReportResponse:
        await self.admin.resolve_report(
            await self._actor(context), request.report_id, request.resolution
        )
        return adpb.ResolveReportResponse()

    async def GetRegistration(
        self, request: adpb.GetRegistrationRequest, context: Context
    ) -> adpb.GetRegistrationResponse:
        policy, chosen = await self.admin.registration(await self._actor(context))
        return adpb.GetRegistrationResponse(policy=POLICY[policy], chosen_by_admin=chosen)

    async def SetRegistration(
        self, request: adpb.SetRegistrationRequest, context: Context
    ) -> adpb.SetRegistrationResponse:
        actor = await self._actor(context)
        chosen = None if request.use_server_setting else policy_of(request.policy)
        policy = await self.admin.set_registration(actor, chosen)
        return adpb.SetRegistrationResponse(policy=POLICY[policy])

    async def ListAuditLog(
        self, request: adpb.ListAuditLogRequest, context: Context
    ) -> adpb.ListAuditLogResponse:
        rows, token = await self.admin.audit_log(
            await self._actor(context), request.page_size, request.page_token
        )
        return adpb.ListAuditLogResponse(
            entries=[
                adpb.AuditEntry(
                    entry_id=r.entry_id,
                    time=convert.ts(r.time),
                    actor=r.actor,
                    action=r.action,
                    target=r.target,
                    detail=r.detail,
                )
                for r in rows
            ],
            next_page_token=token,
        )
