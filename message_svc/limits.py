"""Rate limits of the front door: token buckets per key, and the login throttle.

All in memory, per message_svc process: with several replicas each one limits on its own
(a client spread over N replicas gets up to N times the allowance), which bounds abuse
without a shared store on the login path.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from natter.errors import ResourceExhausted
from natter.settings import Settings

MAX_TRACKED = 100_000


class KeyedBuckets:
    """A token bucket per key: `capacity` tokens, refilled at capacity per `per_seconds`.

    A capacity of 0 or less means no limit. At most MAX_TRACKED keys are remembered; the
    least recently used are forgotten first (a forgotten key starts full again).
    """

    def __init__(
        self, capacity: float, per_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.rate = capacity / per_seconds if per_seconds > 0 else math.inf
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def _level(self, key: str) -> tuple[float, float]:
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate), now

    def take(self, key: str) -> bool:
        """Spend a token; False (nothing spent) when the bucket is empty."""
        if self.capacity <= 0:
            return True
        tokens, now = self._level(key)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            return False
        self._buckets[key] = (tokens - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return True

    def wait(self, key: str) -> float:
        """Seconds until the key has a token again (0 when it has one)."""
        if self.capacity <= 0:
            return 0.0
        tokens, _ = self._level(key)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


class LoginThrottle:
    """Wrong passwords per account and client address, and per account from everywhere.

    Past `login_failures_allowed` wrong passwords for one account from one address, each
    further try from there waits a delay that doubles from `login_delay_seconds` up to
    `login_delay_max_seconds`; a success there clears it. A stranger guessing from one
    address so slows down only themselves. Guessing spread over many addresses meets a
    ceiling for the account: past `login_account_failures_allowed` wrong passwords within
    an hour (a bucket refilled at that many an hour), tries are refused from everywhere —
    except from a device that holds a token of the account (`trusted`), so the owner is
    never locked out. The account is named by its id whatever identifier (username, phone)
    named it. A throttled try costs no Argon2 hash.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed = settings.login_failures_allowed
        self.base = settings.login_delay_seconds
        self.most = settings.login_delay_max_seconds
        self._clock = clock
        self._failed: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._accounts = KeyedBuckets(settings.login_account_failures_allowed, 3600.0, clock)

    def check(self, account: str, address: str = "", trusted: bool = False) -> None:
        entry = self._failed.get((account, address))
        if entry is not None:
            wait = entry[1] - self._clock()
            if wait > 0:
                raise ResourceExhausted(
                    f"too many wrong passwords for this account; try again in {math.ceil(wait)} s",
                    "LOGIN_THROTTLED",
                )
        if not trusted and self._accounts.wait(account) > 0:
            wait = self._accounts.wait(account)
            raise ResourceExhausted(
                "too many wrong passwords for this account from many places; try again in "
                f"{math.ceil(wait)} s, or from a device where you are logged in",
                "LOGIN_THROTTLED",
            )

    def failed(self, account: str, address: str = "") -> None:
        key = (account, address)
        count = self._failed.pop(key, (0, 0.0))[0] + 1
        over = count - self.allowed
        delay = 0.0 if over <= 0 else min(self.most, self.base * 2 ** (over - 1))
        self._failed[key] = (count, self._clock() + delay)
        while len(self._failed) > MAX_TRACKED:
            self._failed.popitem(last=False)
        self._accounts.take(account)

    def succeeded(self, account: str, address: str = "") -> None:
        self._failed.pop((account, address), None)
