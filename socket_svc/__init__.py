"""socket_svc: the edge holding each device's live stream; sync on connect and push."""

from socket_svc.hub import ChannelApi, Hub, PresenceApi
from socket_svc.servicer import SocketInternalServicer, SocketServicer, add_socket_service

__all__ = [
    "ChannelApi",
    "Hub",
    "PresenceApi",
    "SocketInternalServicer",
    "SocketServicer",
    "add_socket_service",
]
