"""push_svc: notifications to devices without a live stream, by Web Push or a push gateway."""

from push_svc.ports import Authenticator, Liveness
from push_svc.service import PushConfig, PushService
from push_svc.servicer import PUBLIC_SERVICES, PushServicer, add_public
from push_svc.store import PushStore

__all__ = [
    "PUBLIC_SERVICES",
    "Authenticator",
    "Liveness",
    "PushConfig",
    "PushService",
    "PushServicer",
    "PushStore",
    "add_public",
]
