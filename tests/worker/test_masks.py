"""Motion mask raster (worker/media/masks.py): the polygon's pixels, bounds checked against the image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from contract.errors import ErrorCode, JobError
from worker.media.masks import mask_for_condition, rasterize_polygon
from tests.worker.test_job import MEDIA, make_ctx, run


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 60), st.integers(4, 60), st.data())
def test_a_rectangle_rasterizes_to_its_pixels_and_nothing_else(w, h, data):
    x0 = data.draw(st.integers(0, w - 2)); x1 = data.draw(st.integers(x0 + 1, w - 1))
    y0 = data.draw(st.integers(0, h - 2)); y1 = data.draw(st.integers(y0 + 1, h - 1))
    got = rasterize_polygon([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], (w, h))
    want = np.zeros((h, w), bool)
    want[y0 : y1 + 1, x0 : x1 + 1] = True  # PIL fills the outline's pixels too
    assert got.shape == (h, w) and np.array_equal(got, want)


@given(st.integers(4, 50), st.integers(4, 50), st.floats(0.01, 1000))
def test_a_point_outside_the_image_is_refused_naming_it(w, h, over):
    with pytest.raises(JobError) as e:
        rasterize_polygon([[0, 0], [w + over, 0], [0, h]], (w, h))
    assert e.value.code is ErrorCode.E_INPUT_VALIDATION and e.value.details["field"] == "mask[1]"


def test_a_video_keeps_its_first_frame_after_the_peek():
    frames = [Image.new("RGB", (20, 10), (i, 0, 0)) for i in range(3)]
    it, mask = mask_for_condition([[0, 0], [19, 0], [19, 9]], iter(frames))
    assert mask.shape == (10, 20) and [f.getpixel((0, 0))[0] for f in it] == [0, 1, 2]


def test_a_job_with_a_mask_point_off_the_image_fails_with_input_validation(tmp_path):
    ctx = make_ctx(tmp_path, tmp_path / "cache")
    w, h = Image.open(MEDIA / "portrait.png").size
    payload = {"image": str(MEDIA / "portrait.png"), "audio": str(MEDIA / "speech_person1.wav"),
               "mask": [[0, 0], [w + 5, 0], [0, h]], "sample_steps": 1}
    with pytest.raises(JobError) as e:
        run(ctx, payload)
    assert e.value.code is ErrorCode.E_INPUT_VALIDATION and "mask[1]" in e.value.message


def test_per_speaker_polygons_are_named_by_speaker_when_off_the_image():
    from worker.media.masks import speaker_regions_for_condition

    img = Image.new("RGB", (30, 20))
    tri = [[0, 0], [29, 0], [0, 19]]
    _, (p1, p2) = speaker_regions_for_condition({"person1": tri, "person2": [[5, 5], [25, 5], [25, 15]]}, img)
    assert p1.shape == (20, 30) and p1[0, 0] and not p2[0, 0] and p2[10, 20]
    with pytest.raises(JobError) as e:
        speaker_regions_for_condition({"person1": tri, "person2": [[0, 0], [31, 0], [0, 19]]}, img)
    assert e.value.details["field"] == "masks.person2[1]"
