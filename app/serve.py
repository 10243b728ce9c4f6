"""`natter serve`: run the embedded server or one cluster role until SIGINT/SIGTERM, then stop cleanly."""

from __future__ import annotations

import asyncio
import gc
import logging

from app import logs
from app.embedded import EmbeddedServer
from app.roles import ClusterNode, create_node
from natter.settings import Settings

logger = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    logs.configure(settings)
    server: EmbeddedServer | ClusterNode = (
        EmbeddedServer(settings) if settings.role == "embedded" else create_node(settings)
    )
    await server.start()
    server.metrics.watch_collector()
    settle_heap()
    try:
        await asyncio.Event().wait()
    finally:
        logger.info("stopping")
        await asyncio.shield(server.stop())
        logger.info("stopped")


def settle_heap() -> None:
    """Put what start-up built out of the cyclic collector's reach.

    A full collection walks every tracked object; the modules, descriptors and pools a
    server builds at start-up are most of them, and walking them stalled the event loop
    26-59 ms each time (docs/benchmarks.md), the largest single pause in a send's path.
    Frozen objects are never collected, so only what exists once the server is up is
    frozen; everything made later is collected as before.
    """
    gc.collect()
    gc.freeze()
