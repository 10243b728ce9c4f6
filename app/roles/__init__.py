"""Cluster roles: each service in a process of its own, registered in etcd, peers over gRPC."""

from __future__ import annotations

from app.roles.channel import ChannelNode
from app.roles.message import MessageNode
from app.roles.node import ClusterNode
from app.roles.presence import PresenceNode
from app.roles.socket import SocketNode
from natter.errors import FailedPrecondition
from natter.settings import Settings
from registry import Registry

NODES: dict[str, type[ClusterNode]] = {
    "message": MessageNode,
    "socket": SocketNode,
    "channel": ChannelNode,
    "presence": PresenceNode,
}


def create_node(settings: Settings, registry: Registry | None = None) -> ClusterNode:
    """The process of `settings.role`, assembled and ready to `start()`."""
    node = NODES.get(settings.role)
    if node is None:
        raise FailedPrecondition(f"unknown role {settings.role!r}")
    return node(settings, registry)


__all__ = [
    "NODES",
    "ChannelNode",
    "ClusterNode",
    "MessageNode",
    "PresenceNode",
    "SocketNode",
    "create_node",
]
