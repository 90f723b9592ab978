"""Mp4Writer: chunked H.264 + AAC, faststart, duration tied to the audio; probe_mp4."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.errors import ErrorCode, JobError
from worker.media.mux import Mp4Writer, mp4_top_level_boxes, probe_mp4


def tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def chunk(n: int, h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_three_chunks_with_audio(tmp_path: Path) -> None:
    out = tmp_path / "v" / "out.mp4"
    audio = tone(1.3)
    with Mp4Writer(out, audio) as w:
        for i in range(3):
            w.write_frames(chunk(12, seed=i))  # 36 frames offered, 33 needed
    p = probe_mp4(out)
    assert p.video_codec == "h264" and p.audio_codec == "aac"
    assert p.fps == 25 and p.pix_fmt == "yuv420p"
    assert (p.width, p.height) == (80, 64)
    assert p.num_frames == 33
    assert abs(p.duration_s - 1.3) <= 1 / 25 + 1e-6
    assert p.faststart
    boxes = mp4_top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")
    assert [x.name for x in out.parent.iterdir()] == ["out.mp4"]  # no temp files left


def test_short_video_padded_to_audio(tmp_path: Path) -> None:
    out = tmp_path / "pad.mp4"
    with Mp4Writer(out, tone(1.0)) as w:
        w.write_frames(chunk(10, h=63, w=81))  # odd size -> padded to even
    p = probe_mp4(out)
    assert p.num_frames == 25
    assert (p.width, p.height) == (82, 64)
    assert abs(p.duration_s - 1.0) <= 1 / 25 + 1e-6


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 64, 80), dtype=np.uint8),  # no channel axis
        np.zeros((2, 64, 80, 3), dtype=np.float32),  # wrong dtype
        np.zeros((2, 64, 80, 4), dtype=np.uint8),  # RGBA
    ],
)
def test_corrupt_frames_raise_e_ffmpeg(tmp_path: Path, frames: np.ndarray) -> None:
    out = tmp_path / "bad.mp4"
    with pytest.raises(JobError) as ei:
        with Mp4Writer(out, tone(0.5)) as w:
            w.write_frames(frames)
    assert ei.value.code == ErrorCode.E_FFMPEG
    assert list(tmp_path.iterdir()) == []


def test_corrupt_audio_and_size_change(tmp_path: Path) -> None:
    bad = tone(0.5)
    bad[100] = np.nan
    with pytest.raises(JobError) as ei:
        Mp4Writer(tmp_path / "x.mp4", bad)
    assert ei.value.code == ErrorCode.E_FFMPEG
    with pytest.raises(JobError) as ei:
        with Mp4Writer(tmp_path / "y.mp4", tone(1.0)) as w:
            w.write_frames(chunk(3))
            w.write_frames(chunk(3, h=32, w=32))
    assert ei.value.code == ErrorCode.E_FFMPEG
    with pytest.raises(JobError) as ei:
        with Mp4Writer(tmp_path / "z.mp4", tone(1.0)):
            pass  # no frames at all
    assert ei.value.code == ErrorCode.E_FFMPEG
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_block_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "o.mp4"
    with pytest.raises(RuntimeError):
        with Mp4Writer(out, tone(1.0)) as w:
            w.write_frames(chunk(5))
            raise RuntimeError("decoder died")
    assert list(tmp_path.iterdir()) == []


def test_probe_corrupt_file(tmp_path: Path) -> None:
    f = tmp_path / "junk.mp4"
    f.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 100)
    with pytest.raises(JobError) as ei:
        probe_mp4(f)
    assert ei.value.code == ErrorCode.E_FFMPEG
