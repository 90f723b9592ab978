"""Results returned inside the job output as base64.

Runpod caps the size of a job's output payload, and base64 adds a third, so inline
is only for short clips; anything larger fails early with a hint instead of the job
result being silently dropped by the platform.
"""
from __future__ import annotations

import base64
from pathlib import Path

from contract.errors import ErrorCode, JobError
from worker.storage.base import StoredVideo, check_key


class InlineStore:
    location = "inline"

    def __init__(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes

    def put(self, local_path: Path, key: str) -> StoredVideo:
        key = check_key(key)
        size = Path(local_path).stat().st_size
        if size > self.max_bytes:
            raise JobError(
                ErrorCode.E_UPLOAD,
                f"result is {size} bytes, over the inline limit of {self.max_bytes} bytes",
                hint="Use output 's3' (or 'volume') for longer videos.",
                details={"bytes": size, "max_bytes": self.max_bytes},
            )
        data = base64.b64encode(Path(local_path).read_bytes()).decode("ascii")
        return StoredVideo(location="inline", key=key, bytes=size, base64=data)
