"""Preview segments: each decodes on its own, they continue one timeline, and together they hold the
frames the final MP4 holds (same length policy: trim past the audio, pad the last, even sizes)."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from worker.media.mux import Mp4Writer
from worker.preview.segment import ORIGIN_S, SegmentPlan, encode_segment


def smooth_frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Slowly moving colour gradients: content like a talking head's, which x264 codes well."""
    y, x = np.mgrid[0:h, 0:w]
    t = np.arange(n)[:, None, None]
    chans = [np.sin((x + 2 * t) / (6 + seed + c) + (y - t) / (9 + c) + seed) for c in range(3)]
    return ((np.stack(chans, -1) * 0.5 + 0.5) * 220 + 16).astype(np.uint8)


def decode(path: Path) -> tuple[np.ndarray, list[float]]:
    with av.open(str(path)) as c:
        frames = [(f.to_ndarray(format="rgb24"), float(f.pts * f.time_base)) for f in c.decode(video=0)]
    return np.stack([f for f, _ in frames]).astype(np.int16), [t for _, t in frames]


@pytest.mark.parametrize("size", [(32, 48), (33, 47)])
def test_segments_continue_one_timeline_and_match_the_mp4(tmp_path, size):
    h, w = size
    audio = (np.sin(np.arange(16000 * 5) / 30) * 0.2).astype(np.float32)  # 5 s: 125 frames
    plan = SegmentPlan(audio=audio)
    chunks = [smooth_frames(50, h, w, s) for s in range(3)]  # 150 frames: the last chunk is cut
    start, paths = 0, []
    for i, c in enumerate(chunks):
        p = tmp_path / f"seg-{i}.ts"
        n = encode_segment(p, c, start, plan, last=i == 2)
        start += c.shape[0]
        if n:
            paths.append(p)
    with Mp4Writer(tmp_path / "final.mp4", audio) as wr:
        for c in chunks:
            wr.write_frames(c)
    final, _ = decode(tmp_path / "final.mp4")
    parts = [decode(p) for p in paths]
    seg = np.concatenate([f for f, _ in parts])
    times = [t for _, ts in parts for t in ts]
    assert seg.shape == final.shape == (125, h + (h & 1), w + (w & 1), 3)
    assert times == pytest.approx([ORIGIN_S + i / 25 for i in range(125)], abs=1e-3)
    diff = abs(seg - final)
    # two lossy encodes of the same frames (different GOPs): close, not equal
    assert diff.mean() < 3.0 and (diff > 24).mean() < 0.01, (diff.mean(), (diff > 24).mean())
    for p in paths:
        with av.open(str(p)) as c:
            assert c.format.name == "mpegts"
            assert {s.type for s in c.streams} == {"video", "audio"}
            first = next(c.demux(video=0))
            assert first.is_keyframe  # a player can start at any segment


def test_last_segment_is_padded_to_the_audio_and_extra_chunks_write_nothing(tmp_path):
    audio = np.zeros(16000 * 2, dtype=np.float32)  # 50 frames
    plan = SegmentPlan(audio=audio)
    assert encode_segment(tmp_path / "a.ts", smooth_frames(30, 16, 16, 1), 0, plan, last=True) == 50
    assert encode_segment(tmp_path / "b.ts", smooth_frames(30, 16, 16, 2), 50, plan, last=True) == 0
    assert not (tmp_path / "b.ts").exists()
    frames, _ = decode(tmp_path / "a.ts")
    assert frames.shape[0] == 50 and abs(frames[-1] - frames[29]).mean() < 2
