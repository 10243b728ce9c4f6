"""A small HTTP listener for /metrics: how cluster roles (which have no web listener) export."""

from __future__ import annotations

from aiohttp import web

from natter.metrics import Metrics
from natter.settings import Settings
from socket_svc.web import metrics_handler


class MetricsServer:
    """GET /metrics on `metrics_addr` (the same access rules as on the web listener)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", metrics_handler(self.metrics, self.settings))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.settings.metrics_addr.rsplit(":", 1)
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
