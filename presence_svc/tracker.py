"""Device liveness from batches of beats: a user is online while any device beat within the timeout."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class Change:
    """A user came online or went offline; `seen` is when they were last seen."""

    user_id: int
    online: bool
    seen: datetime


@dataclass(slots=True)
class _Device:
    node_id: str
    beat: float  # monotonic time the last beat arrived
    foreground: bool = False


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Tracker:
    """Pure state: feed it beats and the passing of time, it answers with transitions."""

    def __init__(
        self,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.timeout = timeout_seconds
        self._clock = clock
        self._wall = wall
        # Oldest beat first, so expiry looks only at devices that are due.
        self._devices: OrderedDict[tuple[int, int], _Device] = OrderedDict()
        self._count: dict[int, int] = {}
        self._seen: dict[int, datetime] = {}

    def online(self, user_id: int) -> bool:
        return user_id in self._count

    def seen(self, user_id: int) -> datetime | None:
        """When an online user's latest beat arrived."""
        return self._seen.get(user_id)

    def online_users(self) -> list[int]:
        return list(self._count)

    def active(self, device_id: int, user_id: int) -> bool:
        """A live stream (beating within the timeout) whose app said it is in the foreground."""
        device = self._devices.get((user_id, device_id))
        return (
            device is not None and device.foreground and device.beat > self._clock() - self.timeout
        )

    def report(
        self,
        node_id: str,
        beats: Iterable[tuple[int, int, bool]],
        foreground: Collection[int] = frozenset(),
    ) -> list[Change]:
        """Apply one socket server's batch: (user, device, connected) per device.

        `foreground` names the connected devices whose app is in the foreground; the others
        of the batch are in the background.
        """
        now, wall = self._clock(), self._wall()
        before: dict[int, bool] = {}
        for user_id, device_id, connected in beats:
            before.setdefault(user_id, self.online(user_id))
            key = (user_id, device_id)
            if connected:
                device = self._devices.get(key)
                if device is None:
                    self._count[user_id] = self._count.get(user_id, 0) + 1
                    self._devices[key] = _Device(node_id, now, device_id in foreground)
                else:
                    # Updated in place: a socket server's report names every device it
                    # holds, and a new object per device per report was garbage for the GC.
                    device.node_id = node_id
                    device.beat = now
                    device.foreground = device_id in foreground
                    self._devices.move_to_end(key)
                self._seen[user_id] = wall
            else:
                device = self._devices.get(key)
                # A device that moved to another socket server is not gone when the old one
                # reports its disconnect.
                if device is not None and device.node_id == node_id:
                    self._drop(key)
                    self._seen[user_id] = wall
        return self._changes(before, wall)

    def expire(self) -> list[Change]:
        """Devices silent for the timeout are offline, even if their stream looks open."""
        deadline = self._clock() - self.timeout
        before: dict[int, bool] = {}
        while self._devices:
            key, device = next(iter(self._devices.items()))
            if device.beat > deadline:
                break
            before.setdefault(key[0], True)
            self._drop(key)
        return self._changes(before, None)

    def forget_node(self, node_id: str) -> list[Change]:
        """A socket server went away: its devices are offline now."""
        before: dict[int, bool] = {}
        wall = self._wall()
        for key in [k for k, dv in self._devices.items() if dv.node_id == node_id]:
            before.setdefault(key[0], True)
            self._drop(key)
            self._seen[key[0]] = wall
        return self._changes(before, None)

    def _drop(self, key: tuple[int, int]) -> None:
        del self._devices[key]
        left = self._count[key[0]] - 1
        if left:
            self._count[key[0]] = left
        else:
            del self._count[key[0]]

    def _changes(self, before: dict[int, bool], wall: datetime | None) -> list[Change]:
        out: list[Change] = []
        for user_id, was in before.items():
            now_online = self.online(user_id)
            if now_online == was:
                continue
            seen = self._seen.get(user_id) or wall or self._wall()
            if not now_online:
                self._seen.pop(user_id, None)
            out.append(Change(user_id, now_online, seen))
        return out
