"""presence_svc: online status from heartbeats, last seen, presence pushed to contacts."""

from presence_svc.service import Fanout, PresenceService, PresenceStore
from presence_svc.servicer import (
    PUBLIC_SERVICES,
    Authenticator,
    PresenceInternalServicer,
    PresenceServicer,
    add_internal,
    add_public,
)
from presence_svc.tracker import Change, Tracker

__all__ = [
    "PUBLIC_SERVICES",
    "Authenticator",
    "Change",
    "Fanout",
    "PresenceInternalServicer",
    "PresenceService",
    "PresenceServicer",
    "PresenceStore",
    "Tracker",
    "add_internal",
    "add_public",
]
