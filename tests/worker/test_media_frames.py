"""Reference video frames come out at 25 fps whatever the source rate, lazily."""
from __future__ import annotations

import av
import numpy as np
import pytest

from contract.errors import ErrorCode, JobError
from worker.media.media_frames import iter_video_frames


def make_video(path, fps: int, n: int) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            img = np.full((48, 64, 3), i * 7 % 255, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("fps,n", [(25, 50), (50, 100), (10, 20)])
def test_resampled_to_25_fps(tmp_path, fps, n):
    path = tmp_path / f"v{fps}.mp4"
    make_video(path, fps, n)
    frames = list(iter_video_frames(path, 25))
    assert abs(len(frames) - 50) <= 2 and frames[0].size == (64, 48)


def test_corrupt_video_is_input_validation(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(JobError) as e:
        list(iter_video_frames(bad))
    assert e.value.code is ErrorCode.E_INPUT_VALIDATION
