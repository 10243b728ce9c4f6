"""The HTTP listener of a socket server: health, the Connect gateway, the WebSocket, the web app."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web

from natter import tls
from natter.metrics import CONTENT_TYPE_LATEST, NO_METRICS, Metrics
from natter.rpc import ClientAddresses
from natter.settings import Settings
from socket_svc.gateway import Gateway
from socket_svc.hub import Hub
from socket_svc.ports import MessageApi
from socket_svc.websocket import WebSocketEdge

logger = logging.getLogger(__name__)

DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent / "web" / "dist"

PLACEHOLDER = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>natter</title></head><body><h1>natter</h1>
<p>This server speaks gRPC on <code>{grpc}</code>. The web app is not built: run
<code>scripts/serve</code> (or <code>npm ci &amp;&amp; npm run build</code> in <code>web/</code>).
Meanwhile use the <code>natter</code> command line.</p>
</body></html>"""

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

# Files whose names do not change between builds must be revalidated; hashed assets never change.
_REVALIDATE = {"index.html", "sw.js", "manifest.webmanifest"}


def resolve_web_dir(settings: Settings) -> Path | None:
    """settings.web_dir, else <repo>/web/dist when it holds a build; None serves a placeholder."""
    candidate = settings.web_dir if settings.web_dir is not None else DEFAULT_WEB_DIR
    if (candidate / "index.html").is_file():
        return candidate.resolve()
    if settings.web_dir is not None:
        logger.warning("web_dir %s has no index.html; serving a placeholder", candidate)
    return None


def content_security_policy(host: str) -> str:
    """Only this origin: scripts, styles, the gateway and the WebSocket; nothing inline."""
    sockets = f" ws://{host} wss://{host}" if _HOST.match(host) else ""
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"media-src 'self' blob:; connect-src 'self'{sockets}; manifest-src 'self'; "
        "worker-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:  # a WebSocket upgrade has already sent its headers
        response.headers.setdefault(
            "Content-Security-Policy", content_security_policy(request.host)
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.secure:  # served over TLS: browsers keep to HTTPS for this host
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


def client_address(request: web.Request, addresses: ClientAddresses) -> str:
    """The browser's address: the peer, or the last X-Forwarded-For entry of a trusted proxy."""
    peer = request.remote or ""
    if addresses.networks and addresses.trusted(peer):
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            return forwarded.rsplit(",", 1)[-1].strip()[:64] or peer
    return peer


def _private(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def metrics_handler(
    metrics: Metrics, settings: Settings
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /metrics: the Prometheus text format.

    With `metrics_token` set, a request needs "Authorization: Bearer <token>"; without it,
    only loopback and private-network peers are answered (a public listener does not tell
    the world how busy it is).
    """

    async def handle(request: web.Request) -> web.Response:
        token = settings.metrics_token
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.Response(status=401, text="metrics need a bearer token\n")
        elif not _private(request.remote or ""):
            return web.Response(status=403, text="metrics are for private addresses only\n")
        if not metrics.enabled:
            return web.Response(status=404, text="metrics are off (metrics_enabled)\n")
        body = metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return handle


class WebServer:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        api: MessageApi,
        grpc_address: str,
        gateway_target: str = "",
        metrics: Metrics = NO_METRICS,
        gateway_key: str = "",
        extra_routes: Sequence[web.RouteDef] = (),
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.api = api
        self.grpc_address = grpc_address
        self.metrics = metrics
        self.web_dir = resolve_web_dir(settings)
        self.addresses = ClientAddresses(settings.trusted_proxies)
        self.gateway = Gateway(
            gateway_target or grpc_address,
            settings.max_frame_bytes,
            gateway_key,
            lambda r: client_address(r, self.addresses),
        )
        self.sockets = WebSocketEdge(
            hub, api, settings, lambda r: client_address(r, self.addresses)
        )
        self.extra_routes = extra_routes
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        await self.gateway.start()
        app = web.Application(
            middlewares=[_security_headers], client_max_size=self.settings.max_frame_bytes + 65536
        )
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", metrics_handler(self.metrics, self.settings))
        app.add_routes(self.sockets.routes())
        # Routes other services serve on this listener (attachments), before the gateway's
        # catch-all POST /{service}/{method}.
        app.add_routes(self.extra_routes)
        app.add_routes(self.gateway.routes())
        app.router.add_get("/", self._index)
        if self.web_dir is not None:
            app.router.add_get("/{name:[^/]+}", self._file)
            app.router.add_get("/assets/{name:[^/]+}", self._asset)
            app.router.add_get("/icons/{name:[^/]+}", self._icon)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.settings.http_addr.rsplit(":", 1)
        context = None
        if self.settings.tls_cert_file:
            context = tls.server_context(self.settings.tls_cert_file, self.settings.tls_key_file)
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        await self.sockets.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.gateway.close()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "serving", "sessions": len(self.hub.by_device)})

    async def _index(self, request: web.Request) -> web.StreamResponse:
        if self.web_dir is None:
            return web.Response(
                text=PLACEHOLDER.format(grpc=self.grpc_address), content_type="text/html"
            )
        return self._send(self.web_dir / "index.html")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        return self._serve(self.web_dir, request.match_info["name"])

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        assert self.web_dir is not None
        return self._serve(self.web_dir / "assets", request.match_info["name"])

    async def _icon(self, request: web.Request) -> web.StreamResponse:
        assert self.web_dir is not None
        return self._serve(self.web_dir / "icons", request.match_info["name"])

    def _serve(self, folder: Path | None, name: str) -> web.StreamResponse:
        if folder is None or name.startswith(".") or "\\" in name:
            raise web.HTTPNotFound()
        path = folder / name
        if not path.is_file():
            raise web.HTTPNotFound()
        return self._send(path)

    def _send(self, path: Path) -> web.FileResponse:
        response = web.FileResponse(path)
        if path.name in _REVALIDATE:
            response.headers["Cache-Control"] = "no-cache"
        elif path.parent.name == "assets":
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        else:
            response.headers["Cache-Control"] = "public, max-age=3600"
        if path.suffix == ".webmanifest":
            response.content_type = "application/manifest+json"
        return response
