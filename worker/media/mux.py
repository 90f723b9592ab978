"""Encode generated frames and the driving audio into a streamable MP4 (H.264 + AAC).

Why it is shaped like this:
- Frames arrive chunk by chunk from the decoder (81-frame windows); each chunk is
  encoded and dropped at once, so memory stays at one chunk however long the video.
- Audio is encoded alongside the video, up to each written frame's time, so the file is
  interleaved (players and range requests read it front to back) and never needs a
  second pass.
- Duration policy (decided): the video has exactly `ceil(audio_s * fps)` frames. Frames
  past that are dropped (trim); if the generator delivered fewer, the last frame is
  repeated (pad). The video therefore ends within one frame (<= 1/fps) after the audio,
  and the full audio track is kept, never cut.
- Odd frame sizes are padded by one pixel (edge replicated) on the right/bottom because
  yuv420p needs even dimensions; the probe reports the padded size.
- The file is written under a temporary name in the target folder and renamed on
  success, with `movflags=+faststart` so the moov atom is at the front.
"""
from __future__ import annotations

import math
import os
import struct
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
from av.audio.fifo import AudioFifo
from av.audio.resampler import AudioResampler

from contract.choices import AUDIO_SAMPLE_RATE, VIDEO_FPS
from contract.errors import ErrorCode, JobError

AUDIO_RATE_OUT = 48000


@dataclass(frozen=True)
class ProbeResult:
    video_codec: str | None
    audio_codec: str | None
    fps: float
    width: int
    height: int
    duration_s: float
    num_frames: int
    pix_fmt: str | None
    video_duration_s: float | None = None
    audio_duration_s: float | None = None
    audio_sample_rate: int | None = None
    faststart: bool = False  # moov box before mdat


def _ffmpeg_error(message: str, exc: BaseException | None = None) -> JobError:
    detail = f"{type(exc).__name__}: {exc}" if exc is not None else None
    return JobError(ErrorCode.E_FFMPEG, message + (f" ({detail})" if detail else ""), details={"cause": detail} if detail else None)


class Mp4Writer:
    """Streamed MP4 writer. Use as a context manager; call `write_frames` per chunk.

    `audio` is the whole track (float32 mono at `audio_rate`, default 16 kHz); it is
    small next to the frames and fixes the video's length (see the module docstring).
    On an exception inside the `with` block nothing is left at `path`.
    """

    def __init__(
        self,
        path: Path | str,
        audio: np.ndarray,
        *,
        fps: int = VIDEO_FPS,
        audio_rate: int = AUDIO_SAMPLE_RATE,
        crf: int = 18,
        preset: str = "veryfast",
        audio_bitrate: int = 128_000,
    ) -> None:
        self.path = Path(path)
        self.fps = int(fps)
        self.crf = crf
        self.preset = preset
        self.audio_bitrate = audio_bitrate
        audio = np.asarray(audio)
        if audio.ndim == 2 and 1 in audio.shape:
            audio = audio.reshape(-1)
        if audio.ndim != 1 or audio.size == 0:
            raise _ffmpeg_error(f"audio must be a non-empty mono track, got shape {audio.shape}")
        if not np.issubdtype(audio.dtype, np.floating):
            raise _ffmpeg_error(f"audio must be float32 samples in [-1, 1], got {audio.dtype}")
        if not np.all(np.isfinite(audio)):
            raise _ffmpeg_error("audio contains NaN or infinite samples")
        self.audio = np.clip(audio.astype(np.float32, copy=False), -1.0, 1.0)
        self.audio_rate = int(audio_rate)
        self.audio_s = self.audio.size / self.audio_rate
        self.target_frames = max(1, math.ceil(self.audio_s * self.fps - 1e-9))
        self.frames_written = 0
        self._last_frame: np.ndarray | None = None
        self._container: Any = None
        self._vstream: Any = None
        self._astream: Any = None
        self._resampler: AudioResampler | None = None
        self._fifo: AudioFifo | None = None
        self._audio_in_pos = 0  # input samples handed to the resampler
        self._audio_out_pts = 0  # output samples encoded
        self._size: tuple[int, int] | None = None  # (width, height) after padding
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp.mp4")

    # -- context manager ------------------------------------------------------------
    def __enter__(self) -> "Mp4Writer":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self._tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        except (av.FFmpegError, OSError) as exc:
            raise _ffmpeg_error(f"cannot create {self.path.name}", exc) from None
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            try:
                self._finish()
            except BaseException:
                self._discard()
                raise
        else:
            self._discard()

    # -- public ---------------------------------------------------------------------
    def write_frames(self, frames: np.ndarray) -> None:
        """Encode a chunk of uint8 RGB frames shaped [N, H, W, 3]."""
        if self._container is None:
            raise RuntimeError("Mp4Writer used outside its `with` block")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise _ffmpeg_error(f"frames must be [N, H, W, 3], got {frames.shape}")
        if frames.dtype != np.uint8:
            raise _ffmpeg_error(f"frames must be uint8, got {frames.dtype}")
        h, w = frames.shape[1:3]
        if h < 2 or w < 2:
            raise _ffmpeg_error(f"frame size {w}x{h} is too small")
        if self._vstream is None:
            self._open_streams(w, h)
        elif (w + (w & 1), h + (h & 1)) != self._size:
            raise _ffmpeg_error(f"frame size changed to {w}x{h} mid-video (was {self._size[0]}x{self._size[1]})")
        for frame in frames:
            if self.frames_written >= self.target_frames:
                return  # trim: frames past the audio's end are dropped
            self._encode_frame(frame)

    # -- internals ------------------------------------------------------------------
    def _open_streams(self, w: int, h: int) -> None:
        pw, ph = w + (w & 1), h + (h & 1)
        self._size = (pw, ph)
        try:
            vs = self._container.add_stream("libx264", rate=self.fps)
            vs.width, vs.height = pw, ph
            vs.pix_fmt = "yuv420p"
            vs.time_base = Fraction(1, self.fps)
            vs.codec_context.time_base = Fraction(1, self.fps)
            vs.options = {"crf": str(self.crf), "preset": self.preset}
            a = self._container.add_stream("aac", rate=AUDIO_RATE_OUT)
            a.layout = "mono"
            a.bit_rate = self.audio_bitrate
            a.time_base = Fraction(1, AUDIO_RATE_OUT)
        except (av.FFmpegError, ValueError) as exc:
            raise _ffmpeg_error("cannot set up the H.264/AAC encoders", exc) from None
        self._vstream, self._astream = vs, a
        self._resampler = AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE_OUT)
        self._fifo = AudioFifo()

    def _encode_frame(self, rgb: np.ndarray) -> None:
        w, h = self._size
        if rgb.shape[0] != h or rgb.shape[1] != w:
            rgb = np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)), mode="edge")
        try:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            vf.pts = self.frames_written
            vf.time_base = Fraction(1, self.fps)
            for pkt in self._vstream.encode(vf):
                self._container.mux(pkt)
        except (av.FFmpegError, ValueError) as exc:
            raise _ffmpeg_error(f"H.264 encoding failed at frame {self.frames_written}", exc) from None
        self.frames_written += 1
        self._last_frame = rgb
        self._feed_audio(until_s=self.frames_written / self.fps)

    def _feed_audio(self, until_s: float | None) -> None:
        """Encode audio up to `until_s` (None: all of it, and flush)."""
        end = self.audio.size if until_s is None else min(self.audio.size, int(round(until_s * self.audio_rate)))
        try:
            if end > self._audio_in_pos:
                chunk = self.audio[self._audio_in_pos : end]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                af.sample_rate = self.audio_rate
                af.pts = self._audio_in_pos
                af.time_base = Fraction(1, self.audio_rate)
                self._audio_in_pos = end
                for rf in self._resampler.resample(af):
                    self._fifo.write(rf)
            if until_s is None:
                for rf in self._resampler.resample(None):
                    self._fifo.write(rf)
            fs = self._astream.codec_context.frame_size or 1024
            while self._fifo.samples >= fs:
                self._encode_audio(self._fifo.read(fs))
            if until_s is None:
                if self._fifo.samples:
                    self._encode_audio(self._fifo.read())
                for pkt in self._astream.encode(None):
                    self._container.mux(pkt)
        except (av.FFmpegError, ValueError) as exc:
            raise _ffmpeg_error("AAC encoding failed", exc) from None

    def _encode_audio(self, frame: av.AudioFrame) -> None:
        frame.pts = self._audio_out_pts
        frame.time_base = Fraction(1, AUDIO_RATE_OUT)
        self._audio_out_pts += frame.samples
        for pkt in self._astream.encode(frame):
            self._container.mux(pkt)

    def _finish(self) -> None:
        if self._vstream is None:
            raise _ffmpeg_error("no frames were written")
        while self.frames_written < self.target_frames:  # pad with the last frame
            self._encode_frame(self._last_frame)
        self._feed_audio(until_s=None)
        try:
            for pkt in self._vstream.encode(None):
                self._container.mux(pkt)
            self._container.close()
        except (av.FFmpegError, OSError) as exc:
            raise _ffmpeg_error("finalising the MP4 failed", exc) from None
        self._container = None
        os.replace(self._tmp, self.path)

    def _discard(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - we are already failing
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)


def mp4_top_level_boxes(path: Path | str) -> list[str]:
    """Names of the top-level MP4 boxes in file order (used to check faststart)."""
    names: list[str] = []
    with open(path, "rb") as f:
        size_total = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + 8 <= size_total and len(names) < 64:
            f.seek(pos)
            size, name = struct.unpack(">I4s", f.read(8))
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
            elif size == 0:
                size = size_total - pos
            names.append(name.decode("latin-1"))
            if size < 8:
                break
            pos += size
    return names


def probe_mp4(path: Path | str) -> ProbeResult:
    """Read codec, geometry, rate and durations of an MP4 (no full decode)."""
    try:
        with av.open(str(path)) as c:
            v = c.streams.video[0] if c.streams.video else None
            a = c.streams.audio[0] if c.streams.audio else None
            vdur = float(v.duration * v.time_base) if v is not None and v.duration else None
            adur = float(a.duration * a.time_base) if a is not None and a.duration else None
            fps = float(v.average_rate) if v is not None and v.average_rate else 0.0
            nframes = int(v.frames) if v is not None and v.frames else (round(vdur * fps) if vdur and fps else 0)
            duration = c.duration / av.time_base if c.duration else max(vdur or 0.0, adur or 0.0)
            result = ProbeResult(
                video_codec=v.codec_context.name if v is not None else None,
                audio_codec=a.codec_context.name if a is not None else None,
                fps=fps,
                width=v.codec_context.width if v is not None else 0,
                height=v.codec_context.height if v is not None else 0,
                duration_s=float(duration),
                num_frames=nframes,
                pix_fmt=(v.codec_context.pix_fmt if v is not None else None),
                video_duration_s=vdur,
                audio_duration_s=adur,
                audio_sample_rate=a.codec_context.sample_rate if a is not None else None,
            )
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise _ffmpeg_error(f"cannot read {Path(path).name} as MP4", exc) from None
    boxes = mp4_top_level_boxes(path)
    faststart = "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat")
    return ProbeResult(**{**result.__dict__, "faststart": faststart})
