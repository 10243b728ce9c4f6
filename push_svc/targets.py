"""Checking a push target before it is stored: only real push services, only sound keys.

The server will POST to whatever a device registers, so an endpoint must be https on a host
of a browser vendor's push service (`web_push_hosts`), and a gateway one the operator
configured (`push_gateway_urls`): a device cannot make the server call anything else.
"""

from __future__ import annotations

import binascii
import re
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from natter.domain import PushKind, PushTarget
from natter.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from natter.settings import Settings
from push_svc.vapid import unb64url

MAX_URL = 1024
_APP_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_PUSHKEY = re.compile(r"^[\x21-\x7e]{1,512}$")


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == a or host.endswith("." + a) for a in (x.lower() for x in allowed))


def _url(value: str, settings: Settings, what: str) -> str:
    if not value or len(value) > MAX_URL:
        raise InvalidArgument(
            f"the {what} must be a URL of at most {MAX_URL} characters", "BAD_PUSH_URL"
        )
    parts = urlsplit(value)
    schemes = ("https", "http") if settings.push_allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise InvalidArgument(f"the {what} must be an https URL", "BAD_PUSH_URL")
    return parts.hostname


def check(target: PushTarget, settings: Settings) -> PushTarget:
    """The target if it may be stored, else INVALID_ARGUMENT / PERMISSION_DENIED saying why."""
    if target.kind is PushKind.WEB_PUSH:
        host = _url(target.endpoint, settings, "push endpoint")
        if not host_allowed(host, settings.web_push_hosts):
            raise PermissionDenied(
                f"{host} is not a push service this server sends to", "PUSH_HOST_NOT_ALLOWED"
            )
        try:
            point = unb64url(target.p256dh)
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            auth = unb64url(target.auth)
        except (ValueError, binascii.Error) as e:
            raise InvalidArgument(
                "p256dh must be a base64url P-256 public key and auth base64url", "BAD_PUSH_KEYS"
            ) from e
        if len(point) != 65 or len(auth) != 16:
            raise InvalidArgument(
                "p256dh must be 65 bytes (uncompressed) and auth 16 bytes", "BAD_PUSH_KEYS"
            )
        return PushTarget(
            target.device_id,
            target.user_id,
            target.kind,
            target.endpoint,
            target.p256dh,
            target.auth,
        )
    if target.kind is PushKind.GATEWAY:
        if not settings.push_gateway_urls:
            raise FailedPrecondition("this server has no push gateway configured", "NO_GATEWAY")
        _url(target.endpoint, settings, "gateway URL")
        if target.endpoint not in settings.push_gateway_urls:
            raise PermissionDenied(
                "that push gateway is not one this server uses; see GetPushConfig",
                "GATEWAY_NOT_ALLOWED",
            )
        if not _APP_ID.match(target.app_id):
            raise InvalidArgument("app_id: 1-128 of A-Z a-z 0-9 . _ -", "BAD_APP_ID")
        if not _PUSHKEY.match(target.pushkey):
            raise InvalidArgument("pushkey: 1-512 printable characters, no spaces", "BAD_PUSHKEY")
        return PushTarget(
            target.device_id,
            target.user_id,
            target.kind,
            target.endpoint,
            app_id=target.app_id,
            pushkey=target.pushkey,
        )
    raise InvalidArgument("a push target needs web_push or gateway", "NO_PUSH_TARGET")
