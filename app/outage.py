"""A message node's calls that wait on a database gone silent fail at once, for another replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from natter import domain as d
from natter.errors import Unavailable
from socket_svc.servicer import Authenticator

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How often the store's own verdict (its probe's) is looked at.
WATCH_INTERVAL = 0.1


class Outage:
    """Answers the calls in flight UNAVAILABLE when the store finds its database unreachable.

    The store's probe marks the database unreachable within a few seconds of a partition
    and from then on fails new calls at once with UNAVAILABLE (DATABASE_UNREACHABLE), which
    the socket servers' pools move to the other replica. Calls that were already waiting
    on the silent database did not benefit: they hung until their own deadline (15 s for a
    send), and a device's later sends queued behind them, so devices went 9-17 s without an
    acknowledgement. Here the moment the store turns unreachable every call still waiting
    is answered UNAVAILABLE too. Its work is not cancelled halfway through a statement: it
    ends in the background (a send that did commit is found by its client_msg_id when the
    device sends it again).
    """

    def __init__(self, reachable: Callable[[], bool] = lambda: True) -> None:
        self.reachable = reachable
        self.cut_short = 0
        self._waiting = 0
        self._gone: asyncio.Future[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_forever())

    async def stop(self) -> None:
        task, self._watch = self._watch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch_forever(self) -> None:
        was = True
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = self.reachable()
            if was and not now:
                self.trip()
            was = now

    def trip(self) -> None:
        """The database stopped answering: every call in flight is answered UNAVAILABLE."""
        gone, self._gone = self._gone, None
        if gone is None or gone.done():
            return
        if self._waiting:
            logger.warning(
                "database unreachable: %d calls in flight refused for now", self._waiting
            )
        self.cut_short += self._waiting
        gone.set_result(None)

    async def run(self, call: Awaitable[T]) -> T:
        """Await `call`; UNAVAILABLE (DATABASE_UNREACHABLE) if the database goes meanwhile."""
        task = asyncio.ensure_future(call)
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
        gone = self._gone
        self._waiting += 1
        try:
            either: set[asyncio.Future[Any]] = {task, gone}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # the caller went away: so does its call
            raise
        finally:
            self._waiting -= 1
        if task.done():
            return task.result()
        task.add_done_callback(_quiet)
        raise Unavailable("the database stopped answering during the call", "DATABASE_UNREACHABLE")


def _quiet(task: asyncio.Future[Any]) -> None:
    """An abandoned call's outcome is nobody's any more; read it so it is not logged."""
    if not task.cancelled():
        task.exception()


class OutageInterceptor(grpc.aio.ServerInterceptor):
    """Runs every unary call of a listener under an `Outage`."""

    def __init__(self, outage: Outage) -> None:
        self.outage = outage

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        outage = self.outage

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await outage.run(inner(request, context))

        return handler._replace(unary_unary=unary)


class FrontDoor:
    """A message node's Connect and Locate: the token checked here, or by another replica.

    A device whose stream reaches this node while the database is unreachable from here
    would be refused (UNAVAILABLE) and try again; its sends already move to the other
    replica in the same attempt, and so does this: the token is checked there, and the
    device is redirected to its socket server at once.
    """

    def __init__(self, local: Authenticator, others: Authenticator, outage: Outage) -> None:
        self.local = local
        self.others = others
        self.outage = outage

    async def authenticate(self, token: str) -> d.Principal:
        try:
            return await self.outage.run(self.local.authenticate(token))
        except Unavailable as e:
            if e.reason != "DATABASE_UNREACHABLE":
                raise
        return await self.others.authenticate(token)
