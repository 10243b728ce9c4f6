"""Waiting for a condition: poll it until it holds or a deadline passes, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable


async def eventually(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> float:
    """Poll `predicate` (plain or async) until it returns something truthy.

    Returns the seconds it took; raises AssertionError, naming `message`, after `timeout`.
    An exception from the predicate ends the wait at once.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() > deadline:
            what = message or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"condition not met within {timeout} s: {what}")
        await asyncio.sleep(interval)
