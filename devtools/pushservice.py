"""A push service and a push gateway on loopback, for tests and benchmarks: the far end, real.

`PushService` is the receiving side of Web Push (RFC 8030) as a browser vendor runs it, and
the browser too: `subscribe()` makes a subscription with keys generated here (a P-256 key
pair and an auth secret, as a browser holds them), and every push is checked the way a push
service and a browser would — the VAPID token (RFC 8292: signature, `k` matching the key
subscribed with, `aud`, `exp`, `sub`), TTL, Urgency and Topic headers, and the body
decrypted with the subscription's private key and auth secret (RFC 8291, aes128gcm). What
passes is recorded in `received`; what fails is answered 400/403 and recorded in
`problems`. Undelivered messages collapse by Topic (RFC 8030 §5.4) in `pending`.

`/_matrix/push/v1/notify` on the same server is a push gateway in Matrix's style: it checks
the request's shape, records it in `notified`, and answers `{"rejected": [...]}` with the
pushkeys marked rejected.

Each subscription (or pushkey) can be told to answer with other statuses for its next
requests (`script`), to test retries, 404/410 cleanup and Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import http_ece
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

URGENCIES = ("very-low", "low", "normal", "high")
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
GATEWAY_PATH = "/_matrix/push/v1/notify"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    """What a browser's pushManager.subscribe gives it: an endpoint and its own keys."""

    sub_id: str
    endpoint: str
    p256dh: str
    auth: str
    private_key: ec.EllipticCurvePrivateKey
    application_server_key: str


@dataclass(frozen=True)
class Received:
    """One push that passed every check, decrypted."""

    sub_id: str
    payload: dict[str, Any]
    ttl: int
    urgency: str
    topic: str
    claims: dict[str, Any]
    at: float  # time.monotonic() when it arrived
    size: int  # plaintext bytes


@dataclass(frozen=True)
class Notified:
    """One gateway request that passed the shape checks."""

    body: dict[str, Any]
    at: float

    @property
    def note(self) -> dict[str, Any]:
        return dict(self.body["notification"])

    @property
    def pushkeys(self) -> list[str]:
        return [str(dv["pushkey"]) for dv in self.note["devices"]]


@dataclass
class _Script:
    statuses: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)


class PushService:
    """`async with PushService() as ps:` serves on 127.0.0.1, any free port."""

    def __init__(self, *, decrypt: bool = True, delay: float = 0.0) -> None:
        self.decrypt = decrypt
        self.delay = delay
        self.origin = ""
        self.subs: dict[str, Subscription] = {}
        self.received: list[Received] = []
        self.notified: list[Notified] = []
        self.problems: list[str] = []
        self.requests = 0
        self.arrivals: list[float] = []
        self.rejected: set[str] = set()
        self.pending: dict[str, dict[str, Received]] = defaultdict(dict)
        self._scripts: dict[str, _Script] = defaultdict(_Script)
        self._runner: web.AppRunner | None = None
        self._seq = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/push/{sub_id}", self._push)
        app.router.add_post(GATEWAY_PATH, self._gateway)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"http://127.0.0.1:{port}"
        return self.origin

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> PushService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def gateway_url(self) -> str:
        return self.origin + GATEWAY_PATH

    # -- the browser's side --------------------------------------------------------------

    def subscribe(self, application_server_key: str) -> Subscription:
        """A new subscription, as pushManager.subscribe({applicationServerKey}) would make."""
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        sub_id = secrets.token_urlsafe(12)
        sub = Subscription(
            sub_id,
            f"{self.origin}/push/{sub_id}",
            _b64(public),
            _b64(secrets.token_bytes(16)),
            key,
            application_server_key,
        )
        self.subs[sub_id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """The browser dropped it: its endpoint answers 410 Gone from now on."""
        self.subs.pop(sub.sub_id, None)

    def script(self, key: str, *statuses: int, retry_after: str = "") -> None:
        """The next requests for a subscription id or pushkey answer these statuses, in order."""
        headers = {"Retry-After": retry_after} if retry_after else {}
        self._scripts[key].statuses.extend((s, headers) for s in statuses)

    def of(self, sub: Subscription) -> list[Received]:
        return [r for r in self.received if r.sub_id == sub.sub_id]

    def to(self, pushkey: str) -> list[Notified]:
        return [n for n in self.notified if pushkey in n.pushkeys]

    def _scripted(self, key: str) -> tuple[int, dict[str, str]] | None:
        script = self._scripts.get(key)
        if script is None or not script.statuses:
            return None
        return script.statuses.popleft()

    # -- RFC 8030, receiving ---------------------------------------------------------------

    def _refuse(self, status: int, why: str) -> web.Response:
        self.problems.append(why)
        return web.Response(status=status, text=why)

    async def _push(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.arrivals.append(time.monotonic())
        if self.delay:
            await asyncio.sleep(self.delay)
        sub_id = request.match_info["sub_id"]
        body = await request.read()
        scripted = self._scripted(sub_id)
        if scripted is not None:
            return web.Response(status=scripted[0], headers=scripted[1])
        sub = self.subs.get(sub_id)
        if sub is None:
            return web.Response(status=410, text="no such subscription")
        h = request.headers
        ttl = h.get("TTL", "")
        if not ttl.isdigit():
            return self._refuse(400, f"TTL header missing or not a number: {ttl!r}")
        if h.get("Content-Encoding") != "aes128gcm":
            return self._refuse(400, f"Content-Encoding {h.get('Content-Encoding')!r}")
        urgency = h.get("Urgency", "normal")
        if urgency not in URGENCIES:
            return self._refuse(400, f"Urgency {urgency!r}")
        topic = h.get("Topic", "")
        if topic and not _TOPIC.match(topic):
            return self._refuse(400, f"Topic {topic!r} is not 1-32 base64url characters")
        claims = self._vapid(h.get("Authorization", ""), sub)
        if isinstance(claims, str):
            return self._refuse(403, claims)
        payload: dict[str, Any] = {}
        size = len(body)
        if self.decrypt:
            try:
                plain = http_ece.decrypt(
                    body,
                    private_key=sub.private_key,
                    auth_secret=_unb64(sub.auth),
                    version="aes128gcm",
                )
                size = len(plain)
                payload = json.loads(plain)
            except Exception as e:
                return self._refuse(400, f"body does not decrypt to JSON: {e!r}")
        got = Received(sub_id, payload, int(ttl), urgency, topic, claims, time.monotonic(), size)
        self.received.append(got)
        # The browser is "offline": the message waits, replacing one of the same Topic.
        self.pending[sub_id][topic or f"untopiced-{len(self.received)}"] = got
        self._seq += 1
        return web.Response(
            status=201, headers={"Location": f"{self.origin}/message/{self._seq}", "TTL": ttl}
        )

    def _vapid(self, header: str, sub: Subscription) -> dict[str, Any] | str:
        """The token's claims if it is sound and meant for this service, else what is wrong."""
        if not header.lower().startswith("vapid "):
            return f"Authorization is not a vapid token: {header[:20]!r}"
        parts = dict(p.split("=", 1) for p in header[6:].split(",") if "=" in p)
        t, k = parts.get("t", "").strip(), parts.get("k", "").strip()
        if not t or not k:
            return "vapid token lacks t or k"
        if k != sub.application_server_key:
            return "vapid key is not the one the subscription was made with"
        try:
            if not Vapid02.verify(header):
                return "vapid signature does not verify"
            claims = json.loads(_unb64(t.split(".")[1]))
        except Exception as e:
            return f"vapid token unreadable: {e!r}"
        now = time.time()
        if claims.get("aud") != self.origin:
            return f"aud {claims.get('aud')!r} is not {self.origin!r}"
        exp = claims.get("exp")
        if not isinstance(exp, int) or not now < exp <= now + 24 * 3600 + 60:
            return f"exp {exp!r} is not within the next 24 hours"
        sub_claim = str(claims.get("sub", ""))
        if not (sub_claim.startswith("mailto:") or sub_claim.startswith("https:")):
            return f"sub {sub_claim!r} is not a mailto: or https: contact"
        return dict(claims)

    # -- a Matrix-style push gateway ----------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.arrivals.append(time.monotonic())
        try:
            body = await request.json()
            note = body["notification"]
            devices = note["devices"]
            assert isinstance(devices, list) and devices
            for dv in devices:
                assert isinstance(dv["app_id"], str) and isinstance(dv["pushkey"], str)
            assert isinstance(note["event_id"], str) and isinstance(note["room_id"], str)
            assert note.get("prio", "high") in ("high", "low")
        except Exception as e:
            return self._refuse(400, f"gateway request malformed: {e!r}")
        scripted = self._scripted(str(devices[0]["pushkey"]))
        if scripted is not None:
            return web.Response(status=scripted[0], headers=scripted[1])
        self.notified.append(Notified(body, time.monotonic()))
        rejected = [str(dv["pushkey"]) for dv in devices if dv["pushkey"] in self.rejected]
        return web.json_response({"rejected": rejected})
