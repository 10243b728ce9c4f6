"""The reference Python SDK: unary calls, a resilient live connection, client-side ordering."""

from natter.sdk.client import Client
from natter.sdk.connection import (
    Connected,
    Connection,
    Disconnected,
    Event,
    Rejected,
    SyncDone,
)
from natter.sdk.fold import Fold, View
from natter.sdk.history import JsonlRecorder, Recorder
from natter.sdk.media import Media
from natter.sdk.merge import Gap, Merger

__all__ = [
    "Client",
    "Connected",
    "Connection",
    "Disconnected",
    "Event",
    "Fold",
    "Gap",
    "JsonlRecorder",
    "Media",
    "Merger",
    "Recorder",
    "Rejected",
    "SyncDone",
    "View",
]
