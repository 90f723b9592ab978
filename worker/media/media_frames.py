"""Reads a reference video as RGB frames at the output frame rate, one at a time.

Dubbing conditions each chunk on the source frame at that chunk's start, so the engine pulls
frames lazily: a long source video is never held in memory.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
from PIL import Image

from contract.choices import VIDEO_FPS
from contract.errors import ErrorCode, JobError


def iter_video_frames(path: Path | str, fps: float = VIDEO_FPS) -> Iterator[Image.Image]:
    """Frames resampled to `fps` by timestamp (the latest source frame at or before each tick)."""
    try:
        container = av.open(str(path), metadata_errors="ignore")  # corrupt tags must not stop the frames
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise JobError(ErrorCode.E_INPUT_VALIDATION, f"cannot open the reference video: {exc}") from exc
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tick = 0
        last: Image.Image | None = None
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else tick / fps
                image = frame.to_image().convert("RGB")
                while tick / fps < t:
                    # Source frames are sparser than the output rate: repeat the previous one.
                    if last is None:
                        break
                    yield last
                    tick += 1
                if tick / fps <= t + 1e-6:
                    yield image
                    tick += 1
                last = image
        except (av.FFmpegError, ValueError) as exc:
            raise JobError(ErrorCode.E_INPUT_VALIDATION, f"the reference video does not decode: {exc}") from exc
