"""What message_svc needs from the rest of the system: pushes to devices, news of logouts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from natter.domain import Delivery


class Fanout(Protocol):
    """Routes deliveries: user-addressed ones to their socket servers, group ones via channels."""

    async def deliver(self, deliveries: Sequence[Delivery]) -> None: ...


class DeviceRevocations(Protocol):
    """Told whenever devices are logged out, whatever the cause.

    Logout, revoking a device or the others, a password change or reset, disabling or
    deleting the account: what is kept per device elsewhere (a push notification target,
    say) can go with it. Devices whose tokens lapse unused are not announced (they are
    refused from then on, and their rows stay).
    """

    async def devices_revoked(self, user_id: int, device_ids: Sequence[int]) -> None: ...
