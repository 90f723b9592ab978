"""Refuse media that would blow up when decoded (decompression bombs) or is corrupt.

A 30 MB PNG can claim 100000x100000 pixels and ask for 30 GB when decoded; a small
video can declare 8K frames or hours of duration. These checks read only headers and
container metadata first, compare them with caps, and decode (a bounded amount) only
after that, so the worker fails fast with a clear E_INPUT_VALIDATION instead of being
killed for memory mid-job.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image, ImageFile, UnidentifiedImageError

from contract.choices import MAX_AUDIO_DECODED_BYTES
from contract.errors import ErrorCode, JobError


@dataclass(frozen=True)
class MediaLimits:
    max_image_pixels: int = 40_000_000  # ~ 7300x5500; the model needs far less
    max_video_pixels: int = 3840 * 2160
    max_video_duration_s: float = 600.0
    max_video_frames: int = 600 * 60
    max_audio_duration_s: float = 600.0
    #: float32 bytes the whole file decodes to (seconds x rate x channels x 4; contract.choices says why)
    max_audio_decoded_bytes: int = MAX_AUDIO_DECODED_BYTES


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str | None
    mode: str


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float
    codec: str
    has_audio: bool


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    sample_rate: int
    channels: int
    codec: str


def _invalid(kind: str, name: str, what: str, hint: str | None = None, **details: object) -> JobError:
    """The message says what is wrong; the job puts the field in front (`image: ...`, `audio.person2: ...`).
    The file's name here is the worker's own for its download, which tells the sender nothing: details only."""
    return JobError(ErrorCode.E_INPUT_VALIDATION, what, hint=hint, details={"file": name, "kind": kind, **details})


def check_image(path: Path, limits: MediaLimits = MediaLimits()) -> ImageInfo:
    """Header check against the pixel cap, then a full decode to catch truncation."""
    name = Path(path).name
    # PIL's own guard, as a second line: it warns above and raises above 2x this value.
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # Our own header check below gives the precise message; PIL's warning adds nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # lazy: reads the header only
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise _invalid("image", name, f"invalid size {w}x{h}")
                if w * h > limits.max_image_pixels:
                    raise _too_many_pixels(name, w, h, limits.max_image_pixels)
                fmt, mode = im.format, im.mode
                im.load()  # bounded by the check above; raises on truncated data
    except JobError:
        raise
    except Image.DecompressionBombError as exc:  # PIL refused in Image.open (over 2x the cap)
        said = re.search(r"\((\d+) pixels\)", str(exc))  # PIL's words name its own 2x figure, not our cap
        pixels = f"{int(said.group(1))} pixels" if said else "its declared size"
        raise _invalid(
            "image", name, f"{pixels} exceeds the limit of {limits.max_image_pixels}",
            hint="Downscale the image (the model works at 480p/720p).", reason="too_many_pixels"
        ) from None
    except UnidentifiedImageError:
        raise _invalid("image", name, "not a readable image", hint="Send a PNG, JPEG or WebP file.", reason="corrupt") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _invalid(
            "image", name, f"corrupt or truncated image ({exc})", hint="Re-export the image and try again.", reason="corrupt"
        ) from None
    return ImageInfo(width=w, height=h, format=fmt, mode=mode)


def _too_many_pixels(name: str, w: int, h: int, cap: int) -> JobError:
    return _invalid(
        "image",
        name,
        f"{w}x{h} = {w * h} pixels exceeds the limit of {cap}",
        hint="Downscale the image (the model works at 480p/720p).",
        reason="too_many_pixels",
        width=w,
        height=h,
    )


def check_video(path: Path, limits: MediaLimits = MediaLimits()) -> VideoInfo:
    """Container metadata against the caps, then decode one frame to prove it decodes."""
    name = Path(path).name
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            if not c.streams.video:
                raise _invalid("video", name, "has no video stream")
            v = c.streams.video[0]
            if v.codec_context is None:  # a stream FFmpeg has no decoder for (or a corrupt codec tag)
                raise _invalid("video", name, "unknown or unsupported codec", hint="Re-encode the video as H.264 MP4.",
                               reason="corrupt")
            w, h = v.codec_context.width, v.codec_context.height
            if w <= 0 or h <= 0:
                raise _invalid("video", name, "unknown frame size", reason="corrupt")
            if w * h > limits.max_video_pixels:
                raise _invalid(
                    "video",
                    name,
                    f"{w}x{h} frames exceed the limit of {limits.max_video_pixels} pixels",
                    hint="Downscale the video to 1080p or less.",
                    reason="too_many_pixels",
                )
            fps = float(v.average_rate or v.guessed_rate or 0) or 25.0
            if v.duration and v.time_base:
                duration = float(v.duration * v.time_base)
            elif c.duration:
                duration = c.duration / av.time_base
            else:
                duration = 0.0
            if duration <= 0:  # a streamed WebM/MKV (a browser's recorder, ffmpeg to a pipe) says no length
                frames, duration = _count_packets(path, fps, limits)
            else:
                frames = int(v.frames) if v.frames else int(round(duration * fps))
            if duration > limits.max_video_duration_s:
                raise _invalid(
                    "video", name, f"{duration:.1f} s exceeds the limit of {limits.max_video_duration_s:.0f} s",
                    hint="Trim the video.", reason="too_long",
                )
            if frames > limits.max_video_frames:
                raise _invalid(
                    "video", name, f"{frames} frames exceed the limit of {limits.max_video_frames}",
                    hint="Trim the video or lower its frame rate.", reason="too_many_frames",
                )
            first = next(c.decode(video=0), None)
            if first is None:
                raise _invalid("video", name, "no decodable frames", reason="corrupt")
            if duration <= 0:
                raise _invalid("video", name, "unknown duration", reason="corrupt")
            return VideoInfo(
                width=w,
                height=h,
                fps=fps,
                num_frames=frames,
                duration_s=duration,
                codec=v.codec_context.name,
                has_audio=bool(c.streams.audio),
            )
    except JobError:
        raise
    except (av.FFmpegError, OSError, ValueError, StopIteration) as exc:
        raise _invalid(
            "video", name, f"corrupt or unsupported video ({type(exc).__name__})",
            hint="Re-encode the video as H.264 MP4.", reason="corrupt",
        ) from None


def _count_packets(path: Path, fps: float, limits: MediaLimits) -> tuple[int, float]:
    """(frames, seconds) of the first video stream from its packets' timestamps, read without decoding and
    only until a cap is passed, for containers whose header gives no duration."""
    n, first, last = 0, None, None
    with av.open(str(path), metadata_errors="ignore") as c:
        v = c.streams.video[0]
        tb = v.time_base
        for packet in c.demux(v):
            if packet.size == 0:  # the flush packet at the end
                continue
            n += 1
            if packet.pts is not None and tb:
                t = float(packet.pts * tb)
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
            span = (last - first) if first is not None and last is not None else n / fps
            if n > limits.max_video_frames or span > limits.max_video_duration_s:
                break
    if n == 0:
        return 0, 0.0
    span = (last - first) if first is not None and last is not None else (n - 1) / fps
    return n, span + 1 / fps


def check_audio(path: Path, limits: MediaLimits = MediaLimits()) -> AudioInfo:
    """Duration from the container, or (when it does not say) by counting decoded samples up to the cap."""
    name = Path(path).name
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            if not c.streams.audio:
                raise _invalid("audio", name, "has no audio stream")
            a = c.streams.audio[0]
            if a.codec_context is None:  # a stream FFmpeg has no decoder for (or a corrupt codec tag)
                raise _invalid("audio", name, "unknown or unsupported codec", hint="Send WAV, MP3, FLAC or M4A.",
                               reason="corrupt")
            rate = int(a.codec_context.sample_rate or 0)
            channels = int(a.codec_context.channels or 0) if hasattr(a.codec_context, "channels") else 0
            if a.duration and a.time_base:
                duration = float(a.duration * a.time_base)
            elif c.duration:
                duration = c.duration / av.time_base
            else:
                duration = 0.0
            if duration <= 0:  # raw streams: count, but stop as soon as the cap is passed
                samples = 0
                for frame in c.decode(audio=0):
                    samples += frame.samples
                    rate = rate or frame.sample_rate
                    if rate and samples / rate > limits.max_audio_duration_s:
                        break
                duration = samples / rate if rate else 0.0
            else:
                if next(c.decode(audio=0), None) is None:
                    raise _invalid("audio", name, "no decodable audio", reason="corrupt")
            if duration <= 0:
                raise _invalid("audio", name, "empty or undecodable audio", reason="corrupt")
            if duration > limits.max_audio_duration_s:
                raise _invalid(
                    "audio", name, f"{duration:.1f} s exceeds the limit of {limits.max_audio_duration_s:.0f} s",
                    hint="Shorten the audio or split the job.", reason="too_long",
                )
            decoded = duration * rate * max(channels, 1) * 4
            if decoded > limits.max_audio_decoded_bytes:
                raise _invalid(
                    "audio", name, f"{duration:.1f} s of {channels} channel(s) at {rate} Hz decodes to "
                    f"{decoded / 1e6:.0f} MB, over the limit of {limits.max_audio_decoded_bytes / 1e6:.0f} MB",
                    hint="Send mono or stereo speech at 48 kHz or less.", reason="too_large_decoded",
                )
            return AudioInfo(duration_s=duration, sample_rate=rate, channels=channels, codec=a.codec_context.name)
    except JobError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise _invalid(
            "audio", name, f"corrupt or unsupported audio ({type(exc).__name__})",
            hint="Send WAV, MP3, FLAC or M4A.", reason="corrupt",
        ) from None
