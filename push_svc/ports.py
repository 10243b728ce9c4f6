"""What push_svc needs from the rest of the system: who is looking at the app, who is calling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from natter.domain import Principal


class Liveness(Protocol):
    """Which devices are active: a live stream with the app in the foreground (presence_svc)."""

    async def active_devices(self, devices: Sequence[tuple[int, int]]) -> set[int]:
        """Of (user_id, device_id) pairs, the ids of the active devices."""
        ...


class Authenticator(Protocol):
    """Turns a bearer token into the device acting (message_svc answers this)."""

    async def authenticate(self, token: str) -> Principal: ...
