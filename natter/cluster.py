"""Cluster roles: one service per process, wired to its peers over gRPC."""

from __future__ import annotations

from natter.errors import FailedPrecondition
from natter.settings import Settings


async def serve_role(settings: Settings) -> None:
    raise FailedPrecondition(f"role {settings.role!r} needs etcd endpoints and a database URL")
