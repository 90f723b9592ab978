"""The partial MP4: the segments' frames, in one faststart MP4 that PyAV plays from the start."""
from __future__ import annotations

import numpy as np
import pytest

from tests.worker.test_segment import decode, smooth_frames
from contract.errors import ErrorCode, JobError
from worker.media.mux import probe_mp4
from worker.preview.partial import assemble_mp4
from worker.preview.segment import SegmentPlan, encode_segment


def test_partial_mp4_holds_every_segment_frame(tmp_path):
    audio = (np.sin(np.arange(16000 * 6) / 20) * 0.2).astype(np.float32)
    plan = SegmentPlan(audio=audio)
    paths, start = [], 0
    for i in range(2):  # a job stopped after 2 of its chunks
        frames = smooth_frames(40, 32, 48, i)
        encode_segment(tmp_path / f"s{i}.ts", frames, start, plan, last=False)
        paths.append(tmp_path / f"s{i}.ts")
        start += 40
    out = assemble_mp4(paths, tmp_path / "partial.mp4")
    probe = probe_mp4(out)
    assert probe.faststart and (probe.video_codec, probe.audio_codec) == ("h264", "aac")
    assert probe.num_frames == 80 and probe.duration_s == pytest.approx(3.2, abs=0.05)
    got, times = decode(out)
    assert times[0] == pytest.approx(0.0, abs=1e-3)  # the segments' origin is removed
    assert np.array_equal(got, np.concatenate([decode(p)[0] for p in paths]))  # a copy, not a re-encode


def test_no_segments_is_a_coded_error(tmp_path):
    with pytest.raises(JobError) as err:
        assemble_mp4([], tmp_path / "p.mp4")
    assert err.value.code is ErrorCode.E_FFMPEG
