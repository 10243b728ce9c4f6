"""Sending one push: Web Push (RFC 8030/8291/8292) to a browser's push service, or a gateway.

Encryption is pywebpush's (aes128gcm over http-ece), signing py-vapid's; the HTTP request is
made here on the worker's aiohttp session, and the answer becomes an `Outcome`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from pywebpush import WebPusher

from natter.domain import PushTarget
from push_svc.vapid import Vapid

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 15.0


class Outcome(enum.Enum):
    SENT = 1
    GONE = 2  # the target no longer exists: remove it
    RETRY = 3  # the service is busy or away: try again later
    FAILED = 4  # refused for good (a bad request); dropped


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int = 0
    retry_after: float | None = None
    # Gateway answers: the pushkeys it rejected (each such target is gone).
    rejected: tuple[str, ...] = ()


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _classify(status: int, headers: Any) -> Result:
    if status in (200, 201, 202):
        return Result(Outcome.SENT, status)
    if status in (404, 410):
        return Result(Outcome.GONE, status)
    if status == 429 or status >= 500:
        return Result(Outcome.RETRY, status, retry_after(headers.get("Retry-After")))
    return Result(Outcome.FAILED, status)


def encrypt(target: PushTarget, payload: bytes) -> bytes:
    """The aes128gcm body for this browser's keys (a fresh ECDH key and salt each time)."""
    pusher = WebPusher(
        {"endpoint": target.endpoint, "keys": {"p256dh": target.p256dh, "auth": target.auth}}
    )
    return bytes(pusher.encode(payload, content_encoding="aes128gcm")["body"])


class Sender:
    """Makes push requests over one HTTP session; never raises for what the far end says."""

    def __init__(self, session: aiohttp.ClientSession, vapid: Vapid, ttl_seconds: int) -> None:
        self.session = session
        self.vapid = vapid
        self.ttl = ttl_seconds

    async def web_push(
        self, target: PushTarget, payload: bytes, topic: str, urgency: str
    ) -> Result:
        body = encrypt(target, payload)
        headers = {
            "TTL": str(self.ttl),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Urgency": urgency,
            "Topic": topic,
            "Authorization": self.vapid.authorization(target.endpoint),
        }
        return await self._post(target.endpoint, headers, body)

    async def gateway(self, url: str, body: dict[str, Any]) -> Result:
        return await self._post(url, {}, None, body)

    async def _post(
        self,
        url: str,
        headers: dict[str, str],
        data: bytes | None,
        json_body: dict[str, Any] | None = None,
    ) -> Result:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        try:
            async with self.session.post(
                url, data=data, json=json_body, headers=headers, timeout=timeout
            ) as resp:
                result = _classify(resp.status, resp.headers)
                if json_body is not None and result.outcome is Outcome.SENT:
                    result = Result(Outcome.SENT, resp.status, rejected=await _rejected(resp))
                elif result.outcome is not Outcome.SENT:
                    text = (await resp.text(errors="replace"))[:200]
                    logger.info("push to %s answered %s: %s", _origin(url), resp.status, text)
                return result
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            logger.info("push to %s failed: %r", _origin(url), e)
            return Result(Outcome.RETRY)


async def _rejected(resp: aiohttp.ClientResponse) -> tuple[str, ...]:
    """A gateway's `{"rejected": [pushkey, ...]}`: tokens the vendor no longer knows."""
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return ()
    rejected = body.get("rejected", []) if isinstance(body, dict) else []
    return tuple(str(x) for x in rejected if isinstance(x, str))


def _origin(url: str) -> str:
    """Logs name the push service, never the full endpoint (it is a bearer capability)."""
    return url.split("/", 3)[2] if url.count("/") >= 2 else url
