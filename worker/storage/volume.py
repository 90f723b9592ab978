"""Results written into the Runpod network volume (outputs folder).

Useful when the caller reads results from the same volume (another pod, a file
server) and no bucket exists. Atomic temp-file + rename so a reader polling the
folder never picks up a half-written MP4.
"""
from __future__ import annotations

from pathlib import Path

from contract.errors import ErrorCode, JobError
from worker.storage.base import StoredVideo, atomic_copy, check_key


class FolderStore:
    """Copy results under a root folder; shared by the volume and local stores."""

    location = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, local_path: Path, key: str, **_: object) -> StoredVideo:
        """Copy in place (content type and caching are an HTTP store's concern: ignored here)."""
        key = check_key(key)
        dest = self.root / key
        try:
            size = atomic_copy(Path(local_path), dest)
        except OSError as exc:
            raise JobError(
                ErrorCode.E_UPLOAD,
                f"could not write the result to {self.location} folder {self.root}: {exc.strerror or exc}",
                hint="Check that the folder exists, is writable and has free space.",
            ) from None
        return StoredVideo(location=self.location, key=key, bytes=size, path=str(dest))  # type: ignore[arg-type]


    def discard(self, key: str) -> None:
        """Remove a file this store wrote (best effort)."""
        try:
            (self.root / check_key(key)).unlink(missing_ok=True)
        except (OSError, ValueError):
            pass


class VolumeStore(FolderStore):
    """Results go to `<volume_root>/<outputs_dir>/<key>`."""

    location = "volume"

    def __init__(self, volume_root: Path, outputs_dir: str = "outputs") -> None:
        volume_root = Path(volume_root)
        if not volume_root.is_dir():
            raise JobError(
                ErrorCode.E_UPLOAD,
                f"network volume not mounted at {volume_root}",
                hint="Attach a network volume to the endpoint or choose output 's3' / 'inline'.",
            )
        super().__init__(volume_root / outputs_dir)
