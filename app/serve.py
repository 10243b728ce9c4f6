"""`natter serve`: run the embedded server or one cluster role until SIGINT/SIGTERM, then stop cleanly."""

from __future__ import annotations

import asyncio
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
    try:
        await asyncio.Event().wait()
    finally:
        logger.info("stopping")
        await asyncio.shield(server.stop())
        logger.info("stopped")
