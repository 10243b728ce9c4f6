"""What media_svc needs from the rest of the system: who a token is, and where records live."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol

from natter.domain import AttachmentRecord, Principal


class Authenticator(Protocol):
    """Bearer tokens to principals (message_svc's accounts)."""

    async def authenticate(self, token: str) -> Principal: ...


class MediaStore(Protocol):
    """Attachment and blob records, kept with the messages that refer to them.

    message_svc's SqlStore implements it, so a download is checked against who may see the
    messages that refer to the attachment.
    """

    async def add_attachment(self, record: AttachmentRecord, thumbnail: bytes | None) -> None: ...
    async def get_attachment(self, attachment_id: str) -> AttachmentRecord | None: ...
    async def attachment_thumbnail(self, attachment_id: str) -> bytes | None: ...
    async def may_read_attachment(self, user_id: int, attachment_id: str) -> bool: ...
    async def drop_unsent_attachments(self, before: datetime) -> int: ...
    async def collectable_blobs(self, before: datetime, limit: int) -> list[str]: ...
    async def collect_blob(
        self, sha256: str, before: datetime, delete: Callable[[], Awaitable[None]]
    ) -> bool: ...
