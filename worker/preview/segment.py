"""One finished chunk as one MPEG-TS HLS segment (H.264 + AAC cut to the chunk's audio).

Why MPEG-TS and a fresh encoder per segment: each segment must be playable on its own the moment
it exists (a player fetches it while the next chunk samples). A fresh encoder flushed at the
segment's end starts every segment on an IDR frame and leaves nothing buffered for the next one;
TS carries SPS/PPS and ADTS headers in-band, so no shared init segment has to agree with every
later encode. Timestamps continue across segments (frame `start` has pts `start`), so a player
sees one timeline. The final MP4 is encoded separately (worker/media/mux.py) and is unchanged by this.

The frame policy mirrors Mp4Writer: frames past `ceil(audio_s * fps)` are dropped, the last
segment is padded with its last frame up to that count, odd sizes are padded by one pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.audio.resampler import AudioResampler

from contract.choices import AUDIO_SAMPLE_RATE, VIDEO_FPS
from worker.media.mux import AUDIO_RATE_OUT, _ffmpeg_error

# Every timestamp is shifted by one second: the encoders' first packets (B-frame reordering, AAC
# priming) would otherwise fall before zero, and the TS muxer would move only those segments that
# have them, breaking the one timeline. Players start at the first timestamp; partial.py removes it.
ORIGIN_S = 1


@dataclass(frozen=True)
class SegmentPlan:
    """The video's frame budget, shared by all segments of one job."""

    audio: np.ndarray  # float32 mono, the whole soundtrack
    fps: int = VIDEO_FPS
    audio_rate: int = AUDIO_SAMPLE_RATE
    crf: int = 18
    preset: str = "veryfast"

    @property
    def target_frames(self) -> int:
        return max(1, math.ceil(self.audio.size / self.audio_rate * self.fps - 1e-9))


def _pad_even(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h & 1), (0, w & 1), (0, 0)), mode="edge")


def encode_segment(path: Path, frames: np.ndarray, start: int, plan: SegmentPlan, *, last: bool) -> int:
    """Write frames (uint8 [N, H, W, 3]) that begin at video frame `start` as a TS segment at `path`;
    returns the number of frames in it (0: nothing left inside the video's length, no file written)."""
    frames = np.asarray(frames)
    keep = max(0, min(frames.shape[0], plan.target_frames - start))
    frames = frames[:keep]
    if last and start + keep < plan.target_frames and keep > 0:
        extra = plan.target_frames - start - keep
        frames = np.concatenate([frames, np.repeat(frames[-1:], extra, axis=0)])
    if frames.shape[0] == 0:
        return 0
    frames = _pad_even(frames)
    n = int(frames.shape[0])
    end = start + n
    a0 = int(round(start / plan.fps * plan.audio_rate))
    a1 = plan.audio.size if last else min(plan.audio.size, int(round(end / plan.fps * plan.audio_rate)))
    tmp = path.with_name(f".{path.name}.part")
    try:
        with av.open(str(tmp), mode="w", format="mpegts") as out:
            vs = out.add_stream("libx264", rate=plan.fps)
            vs.width, vs.height = int(frames.shape[2]), int(frames.shape[1])
            vs.pix_fmt = "yuv420p"
            vs.codec_context.time_base = Fraction(1, plan.fps)
            vs.options = {"crf": str(plan.crf), "preset": plan.preset}
            vs.codec_context.gop_size = n  # one IDR, at the segment's start
            aus = out.add_stream("aac", rate=AUDIO_RATE_OUT)
            aus.layout = "mono"
            aus.bit_rate = 128_000
            for i, rgb in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                vf.pts = start + i + ORIGIN_S * plan.fps
                vf.time_base = Fraction(1, plan.fps)
                for pkt in vs.encode(vf):
                    out.mux(pkt)
            for pkt in vs.encode(None):
                out.mux(pkt)
            if a1 > a0:
                _encode_audio(out, aus, plan, a0, a1)
    except (av.FFmpegError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise _ffmpeg_error(f"encoding preview segment at frame {start} failed", exc) from None
    tmp.replace(path)
    return n


def _encode_audio(out: av.container.OutputContainer, stream: av.AudioStream, plan: SegmentPlan, a0: int, a1: int) -> None:
    """The soundtrack's samples [a0, a1) at 48 kHz, stamped at their place on the video's timeline."""
    chunk = np.clip(plan.audio[a0:a1].astype(np.float32, copy=False), -1.0, 1.0)
    af = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
    af.sample_rate = plan.audio_rate
    af.pts = 0
    af.time_base = Fraction(1, plan.audio_rate)
    resampler = AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE_OUT)
    offset = int(round(a0 / plan.audio_rate * AUDIO_RATE_OUT)) + ORIGIN_S * AUDIO_RATE_OUT  # the encoder counts from 0; packets move
    pts = 0
    fs = stream.codec_context.frame_size or 1024
    fifo = av.AudioFifo()
    for rf in [*resampler.resample(af), *resampler.resample(None)]:
        fifo.write(rf)
    while fifo.samples:
        frame = fifo.read(min(fs, fifo.samples)) if fifo.samples >= fs else fifo.read()
        frame.pts = pts
        frame.time_base = Fraction(1, AUDIO_RATE_OUT)
        pts += frame.samples
        for pkt in stream.encode(frame):
            _mux_at(out, pkt, offset)
    for pkt in stream.encode(None):
        _mux_at(out, pkt, offset)


def _mux_at(out: av.container.OutputContainer, pkt: av.Packet, offset: int) -> None:
    if pkt.pts is not None:
        pkt.pts += offset
    if pkt.dts is not None:
        pkt.dts += offset
    out.mux(pkt)
