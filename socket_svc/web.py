"""The HTTP listener of a socket server: health and, when built, the web app."""

from __future__ import annotations

from aiohttp import web

from message_svc.api import MessageApi
from natter.settings import Settings
from socket_svc.hub import Hub

PLACEHOLDER = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>natter</title></head><body><h1>natter</h1>
<p>This server speaks gRPC on <code>{grpc}</code>. Use the <code>natter</code> command line.</p>
</body></html>"""


class WebServer:
    def __init__(self, settings: Settings, hub: Hub, api: MessageApi, grpc_address: str) -> None:
        self.settings = settings
        self.hub = hub
        self.api = api
        self.grpc_address = grpc_address
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/", self._index)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.settings.http_addr.rsplit(":", 1)
        site = web.TCPSite(self._runner, host, int(port))
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "serving", "sessions": len(self.hub.by_device)})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=PLACEHOLDER.format(grpc=self.grpc_address),
                            content_type="text/html")
