"""The condition picture as RGB the way a viewer shows it: the image upright (EXIF orientation), or the
reference video's frames upright (its display rotation) at the output frame rate, one at a time.

Dubbing conditions each chunk on the source frame at that chunk's start, so the engine pulls
frames lazily: a long source video is never held in memory.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from PIL import Image

from contract.choices import VIDEO_FPS
from contract.errors import ErrorCode, JobError

# PIL modes that hold more than 8 bits a sample; a plain convert("RGB") clips them instead of scaling
# (a 16-bit grey PNG comes out white, a float TIFF black).
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


# EXIF orientation -> the transpose that shows the picture upright (the TIFF/EXIF spec's table, as PIL's
# ImageOps.exif_transpose has it).
_EXIF_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation, or 1 when there is none or the EXIF block is corrupt: broken metadata leaves the
    picture as stored rather than failing a job whose pixels are fine (PIL raises struct.error, TypeError, ...
    from a mangled block, and ImageOps.exif_transpose with it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = im.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:  # noqa: BLE001 - any parse failure of optional metadata means "no orientation"
        return 1


def exif_upright(im: Image.Image) -> Image.Image:
    """`im` turned as its EXIF orientation says: every image a job gives (picture and mask alike) goes
    through this, so a mask painted on a phone photo lines up with the upright picture."""
    turn = _EXIF_TURNS.get(_orientation(im))
    return im.transpose(turn) if turn is not None else im


def open_image_rgb(path: Path | str | BinaryIO) -> Image.Image:
    """The image as 8-bit RGB, turned upright as its EXIF orientation says (phone photos are stored
    sideways with a tag), with 16-bit and float samples scaled to 8 bits rather than clipped."""
    with Image.open(path) as im:
        im = exif_upright(im)
        if im.mode in _WIDE_MODES:
            a = np.asarray(im, dtype=np.float64)
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
            # float images hold 0..1, integer ones 0..65535 (16-bit PNG/TIFF)
            peak = a.max(initial=0.0)
            if im.mode.startswith("I;16"):
                top = 65535.0
            else:  # "I" (16-bit PNGs open so) and "F": their values say the range
                top = 1.0 if im.mode == "F" and peak <= 1.0 else 65535.0 if peak > 255 else 255.0
            im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        return im.convert("RGB")


# PyAV's frame.rotation (degrees counterclockwise the display matrix turns the frame; PIL's sense too) -> transpose
_ROTATION_TURNS = {90: Image.Transpose.ROTATE_90, -270: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
                   -180: Image.Transpose.ROTATE_180, -90: Image.Transpose.ROTATE_270, 270: Image.Transpose.ROTATE_270}


def _upright(image: Image.Image, rotation: int) -> Image.Image:
    t = _ROTATION_TURNS.get(int(round(rotation)))
    return image.transpose(t) if t is not None else image


# Bad packets a reference video may have before it counts as damaged (or as many as the frames decoded so far).
_BAD_PACKETS = 25


def _damaged(what: str) -> JobError:
    return JobError(ErrorCode.E_INPUT_VALIDATION, f"video: {what}",
                    hint="video: re-encode the reference video (H.264 MP4) and send it again.",
                    details={"field": "video", "reason": "corrupt"})


def _frames(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
    """The stream's frames, packet by packet. A packet the decoder refuses is skipped, as ffmpeg does (a damaged
    stretch of an otherwise good video must not fail a job in the middle of sampling); a video that is mostly
    damaged, or whose container breaks before any frame, is E_INPUT_VALIDATION naming `video`."""
    good = bad = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                bad += 1
                if bad > max(_BAD_PACKETS, good):
                    raise _damaged(f"the reference video is damaged ({bad} packets do not decode)") from None
                continue
            for frame in frames:
                good += 1
                yield frame
    except av.FFmpegError:  # the container itself breaks off: the frames so far are the video
        if good == 0:
            raise _damaged("the reference video does not decode") from None
    if good == 0:
        raise _damaged("the reference video has no frame that decodes")



def iter_video_frames(path: Path | str, fps: float = VIDEO_FPS) -> Iterator[Image.Image]:
    """Frames resampled to `fps` by timestamp (the latest source frame at or before each tick), timed from the
    first frame: MPEG-TS starts at 1.4 s and a cut clip may start anywhere, which must not freeze the first frame."""
    try:
        container = av.open(str(path), metadata_errors="ignore")  # corrupt tags must not stop the frames
    except (av.FFmpegError, OSError, ValueError):
        raise _damaged("cannot open the reference video") from None
    with container:
        if not container.streams.video:
            raise _damaged("the reference video has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tick = 0
        last: Image.Image | None = None
        origin: float | None = None
        for frame in _frames(container, stream):
            if frame.time is None:
                t = tick / fps
            else:
                origin = float(frame.time) if origin is None else origin
                t = float(frame.time) - origin
            try:
                image = _upright(frame.to_image().convert("RGB"), getattr(frame, "rotation", 0) or 0)
            except (av.FFmpegError, ValueError, OSError):  # a pixel format the converter refuses
                raise _damaged("a frame of the reference video cannot be converted to RGB") from None
            while tick / fps < t - 1e-6:  # the same tolerance as below: t is a difference of floats
                # Source frames are sparser than the output rate: repeat the previous one.
                if last is None:
                    break
                yield last
                tick += 1
            if tick / fps <= t + 1e-6:
                yield image
                tick += 1
            last = image
