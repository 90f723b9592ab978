"""Framing (aspect, width/height): sizes within the tier's budget, refusals coded, and the MP4 really framed.

The tiny model renders at 1/16 of the real sizes (snapped to multiples of 16), so the end-to-end cases pick
real sizes whose tiny renderings differ: the default bucket for portrait.png (704x576) is 32 wide x 48 high.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from configuration import compose_config
from contract.choices import ASPECTS, SIZE_PIXELS, SIZES
from contract.errors import ErrorCode, JobError
from contract.job import parse_job_input
from worker.framing import aspect_size, frame_size
from worker.media.mux import probe_mp4
from worker.resolve import apply_job_overrides, generation_settings
from tests.worker.test_job import ctx, cache_dir, decoded, example, run  # noqa: F401 (fixtures)

BASE = {"image": "https://e.com/a.png", "audio": "https://e.com/a.wav"}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("aspect", ASPECTS)
def test_an_aspect_is_the_largest_multiple_of_16_frame_in_the_budget(aspect, size):
    h, w = aspect_size(aspect, SIZE_PIXELS[size])
    aw, ah = (int(p) for p in aspect.split(":"))
    assert h % 16 == 0 and w % 16 == 0 and h * w <= SIZE_PIXELS[size]
    assert abs((w / h) - aw / ah) / (aw / ah) < 0.05  # the ratio asked for, to within the 16-pixel grid
    assert (h + 16) * (w + 16) > SIZE_PIXELS[size]  # no larger frame on the grid fits
    assert aspect_size("16:9", SIZE_PIXELS["infinitetalk-720"]) == (720, 1280)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SIZES), st.integers(1, 200), st.integers(1, 200))
def test_width_height_within_the_budget_pass_and_larger_are_refused(size, w16, h16):
    width, height = 16 * w16, 16 * h16
    if width * height <= SIZE_PIXELS[size]:
        assert frame_size(size, None, width, height) == (height, width)
    else:
        with pytest.raises(JobError) as info:
            frame_size(size, None, width, height)
        assert info.value.code is ErrorCode.E_INPUT_VALIDATION and "width" in info.value.message


def test_no_framing_keeps_the_bucket_table():
    resolved = apply_job_overrides(compose_config(env={}), parse_job_input(BASE))
    assert resolved.frame_size is None and generation_settings(resolved).frame_size is None


def test_the_tier_cap_applies_to_framing():
    cfg = compose_config(env={})
    big = BASE | {"width": 1280, "height": 720}  # fits 720's budget, not 480's
    with pytest.raises(JobError) as info:
        apply_job_overrides(cfg, parse_job_input(big | {"size": "infinitetalk-480"}))
    assert info.value.code is ErrorCode.E_INPUT_VALIDATION
    if cfg.gpu.max_size == "infinitetalk-720":
        assert apply_job_overrides(cfg, parse_job_input(big | {"size": "infinitetalk-720"})).frame_size == (720, 1280)


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"width": 850, "height": 480}, "width"),
        ({"width": 848, "height": 481}, "height"),
        ({"width": 848}, "height"),
        ({"height": 480}, "width"),
        ({"aspect": "16:9", "width": 640, "height": 640}, "aspect"),
        ({"aspect": "3:2"}, "aspect"),
        ({"width": 0, "height": 480}, "width"),
    ],
)
def test_bad_framing_is_refused_naming_the_field(extra, field):
    with pytest.raises(JobError) as info:
        parse_job_input(BASE | extra)
    err = info.value
    assert err.code is ErrorCode.E_INPUT_VALIDATION
    assert any(e.get("field") == field for e in err.details["errors"]), err.details


def test_a_consistent_aspect_with_width_height_is_accepted():
    job = parse_job_input(BASE | {"aspect": "16:9", "width": 768, "height": 432})
    assert (job.width, job.height) == (768, 432)


def _size(out) -> tuple[int, int]:
    probe = probe_mp4(out["video_path"])
    return probe.width, probe.height


def test_framing_sets_the_mp4_size_and_changes_nothing_else(ctx):  # noqa: F811
    payload = example("single_image.json") | {"sampler": "turbo", "mode": "clip", "frame_num": 17, "seed": 3}
    default, _ = run(ctx, payload, "frame-default")
    assert _size(default) == (32, 48)  # portrait.png's own bucket, 576x704 at 1/16
    wide, _ = run(ctx, payload | {"aspect": "16:9"}, "frame-169")  # 848x480 -> 48x32
    assert _size(wide) == (48, 32)
    free, _ = run(ctx, payload | {"width": 1024, "height": 384}, "frame-free")  # -> 64x32
    assert _size(free) == (64, 32)
    # the default bucket's own size, asked for explicitly: the same frames as the default job
    same, _ = run(ctx, payload | {"width": 576, "height": 704}, "frame-same")
    other, _ = run(ctx, payload | {"seed": 4}, "frame-other")
    diff = abs(decoded(same["video_path"]) - decoded(default["video_path"]))
    seed_diff = abs(decoded(other["video_path"]) - decoded(default["video_path"]))
    # H.264's colour conversion of tiny frames is not bit-stable here (see test_job's same-seed test)
    # so the same frames are told apart from other frames by contrast: another seed differs by far more
    # (a clean-checkout CI run saw 2.5 grey levels of encoder noise against 39.5 for another seed)
    assert diff.mean() < 4.0 and seed_diff.mean() > 8 * max(diff.mean(), 0.5), (diff.mean(), seed_diff.mean())
