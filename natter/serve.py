"""`natter serve`: run a role until SIGINT/SIGTERM, then stop cleanly."""

from __future__ import annotations

import asyncio
import logging

from natter.embedded import EmbeddedServer
from natter.settings import Settings

logger = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.role != "embedded":
        from natter.cluster import serve_role

        await serve_role(settings)
        return
    server = EmbeddedServer(settings)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        logger.info("stopping")
        await asyncio.shield(server.stop())
        logger.info("stopped")
