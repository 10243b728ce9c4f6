"""What message_svc needs from the rest of the system: a way to push events to devices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from natter.domain import Delivery


class Fanout(Protocol):
    """Routes deliveries: user-addressed ones to their socket servers, group ones via channels."""

    async def deliver(self, deliveries: Sequence[Delivery]) -> None: ...
