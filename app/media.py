"""Attachments assembled: the blob store this deployment uses, link signing, the HTTP app."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from aiohttp import web

from media_svc import BlobStore, FileBlobStore, Media, MediaHttp, S3BlobStore
from media_svc.ports import Authenticator, MediaStore
from natter.errors import FailedPrecondition
from natter.settings import Settings


def blob_store(settings: Settings) -> BlobStore:
    """S3 when configured (the cluster's shared store), else files under the data folder."""
    kind = settings.blob_store or ("s3" if settings.s3_endpoint else "file")
    if kind == "s3":
        if not settings.s3_endpoint:
            raise FailedPrecondition("blob_store s3 needs s3_endpoint (and keys)")
        return S3BlobStore(
            settings.s3_endpoint,
            settings.s3_bucket,
            settings.s3_region,
            settings.s3_access_key,
            settings.s3_secret_key,
        )
    if kind != "file":
        raise FailedPrecondition(f"blob_store must be file or s3, not {kind!r}")
    return FileBlobStore(settings.blob_dir or settings.data_dir / "blobs")


def link_key(settings: Settings) -> bytes:
    """The key signed download links are made with.

    The same on every node of a cluster (from the cluster secret); kept in the data folder
    of an embedded server, so links outlive a restart.
    """
    if settings.cluster_secret:
        return hmac.new(
            settings.cluster_secret.encode(), b"natter media links", hashlib.sha256
        ).digest()
    path = settings.data_dir / "media-link.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def build_media(settings: Settings, store: MediaStore, auth: Authenticator) -> Media:
    staging: Path = settings.data_dir / "uploads"
    return Media(settings, store, blob_store(settings), auth, staging, link_key(settings))


def media_app(media: Media) -> web.Application:
    """The HTTP listener of a process that serves only attachments (a message node)."""
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "serving"})

    app.router.add_get("/healthz", healthz)
    app.add_routes(MediaHttp(media).routes())
    return app
