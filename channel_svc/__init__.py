"""channel_svc: group fan-out to the socket servers that have members online."""

from channel_svc.channels import Channels, SocketApi

__all__ = ["Channels", "SocketApi"]
