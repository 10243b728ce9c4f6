"""socket_svc: the edge holding each device's live stream; sync on connect and push."""

from socket_svc.hub import ChannelApi, Hub, PresenceApi
from socket_svc.servicer import SocketInternalServicer, SocketServicer

__all__ = ["ChannelApi", "Hub", "PresenceApi", "SocketInternalServicer", "SocketServicer"]
