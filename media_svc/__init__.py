"""media_svc: attachments (resumable uploads over HTTP, blobs by SHA-256, checked downloads)."""

from media_svc.blobs import BlobStore, FileBlobStore
from media_svc.http import MediaHttp
from media_svc.media import Media
from media_svc.s3 import S3BlobStore
from media_svc.servicer import PUBLIC_SERVICES, MediaServicer

__all__ = [
    "PUBLIC_SERVICES",
    "BlobStore",
    "FileBlobStore",
    "Media",
    "MediaHttp",
    "MediaServicer",
    "S3BlobStore",
]
