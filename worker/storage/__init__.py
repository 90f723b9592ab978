"""Result stores: where finished MP4s go (S3, network volume, local folder, inline)."""
from __future__ import annotations

from worker.storage.base import S3Settings, StorageSettings, StoredVideo, VideoStore

__all__ = ["S3Settings", "StorageSettings", "StoredVideo", "VideoStore", "make_store"]


def make_store(settings: StorageSettings) -> VideoStore:
    """Build the store named by `settings.kind`; boto3 is imported only for s3."""
    if settings.kind == "s3":
        from worker.storage.s3 import S3Store

        return S3Store(settings.s3)
    if settings.kind == "volume":
        from worker.storage.volume import VolumeStore

        return VolumeStore(settings.volume_root, settings.volume_outputs_dir)
    if settings.kind == "local":
        from worker.storage.local import LocalStore

        return LocalStore(settings.local_root)
    if settings.kind == "inline":
        from worker.storage.inline import InlineStore

        return InlineStore(settings.inline_max_bytes)
    raise ValueError(f"unknown storage kind {settings.kind!r}")
