"""The MediaService gRPC servicer: thin, over Media (the bytes go over HTTP, media_svc/http.py)."""

from __future__ import annotations

from typing import Any

import grpc

from media_svc.media import Media
from natter import convert
from natter.rpc import bearer
from natter.v1 import media_service_pb2 as mpb
from natter.v1 import media_service_pb2_grpc as mpb_grpc

PUBLIC_SERVICES = ("natter.v1.MediaService",)

Context = grpc.aio.ServicerContext[Any, Any]


class MediaServicer(mpb_grpc.MediaServiceServicer):
    def __init__(self, media: Media) -> None:
        self.media = media

    async def GetMediaInfo(
        self, request: mpb.GetMediaInfoRequest, context: Context
    ) -> mpb.GetMediaInfoResponse:
        await self.media.authenticate(bearer(context.invocation_metadata()))
        s = self.media.settings
        return mpb.GetMediaInfoResponse(
            http_url=self.media.http_url,
            max_file_bytes=s.max_attachment_bytes,
            chunk_bytes=s.upload_chunk_bytes,
        )

    async def GetAttachment(
        self, request: mpb.GetAttachmentRequest, context: Context
    ) -> mpb.GetAttachmentResponse:
        who = await self.media.authenticate(bearer(context.invocation_metadata()))
        attachment, links = await self.media.links(who, request.attachment_id)
        return mpb.GetAttachmentResponse(
            attachment=convert.attachment(attachment),
            url=links.url,
            thumbnail_url=links.thumbnail_url,
            expire_time=convert.ts(links.expire_time),
        )
