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


# -- mask images (the same raster as a polygon, fetched and checked like `image`) ------------------------------

from worker.media.masks import mask_image_raster, mask_raster, speaker_regions_for_condition  # noqa: E402


def _png(path: Path, raster: np.ndarray, mode: str = "L") -> Path:
    level = np.where(raster, 255, 0).astype(np.uint8)
    if mode == "RGBA":  # the shape in the alpha channel over an opaque-looking black/white drawing it does not follow
        rgba = np.dstack([np.full_like(level, 255)] * 3 + [level])
        Image.fromarray(rgba, "RGBA").save(path)
    else:
        Image.fromarray(level, "L").convert(mode).save(path)
    return path


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 60), st.integers(4, 60), st.data(), st.sampled_from(["L", "RGB", "RGBA", "LA"]))
def test_a_mask_image_of_a_polygons_raster_is_that_raster(tmp_path_factory, w, h, data, mode):
    x0 = data.draw(st.integers(0, w - 2)); x1 = data.draw(st.integers(x0 + 1, w - 1))
    y2 = data.draw(st.integers(0, h - 1))
    points = [[x0, 0], [x1, 0], [x1, h - 1], [x0, y2]]
    want = rasterize_polygon(points, (w, h))
    path = _png(tmp_path_factory.mktemp("m") / "m.png", want, "RGBA" if mode == "LA" else mode)
    got = mask_raster(path, (w, h))
    assert got.shape == (h, w) and np.array_equal(got, want)
    assert np.array_equal(mask_raster(points, (w, h)), want)  # the polygon takes the same function


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 40), st.integers(8, 40), st.integers(2, 4), st.data())
def test_a_larger_mask_image_is_stretched_to_the_picture_and_differs_only_on_the_edge(tmp_path_factory, w, h, k, data):
    x0 = data.draw(st.integers(1, w - 4)); x1 = data.draw(st.integers(x0 + 2, w - 2))
    y0 = data.draw(st.integers(1, h - 4)); y1 = data.draw(st.integers(y0 + 2, h - 2))
    want = np.zeros((h, w), bool)
    want[y0:y1, x0:x1] = True
    big = np.kron(want, np.ones((k, k), bool))  # the same mask drawn k times larger
    got = mask_image_raster(_png(tmp_path_factory.mktemp("m") / "m.png", big), (w, h))
    off = got != want
    edge = want ^ np.pad(want, 1)[2:, 1:-1] | want ^ np.pad(want, 1)[:-2, 1:-1] \
        | want ^ np.pad(want, 1)[1:-1, 2:] | want ^ np.pad(want, 1)[1:-1, :-2]
    assert not (off & ~edge).any()
    assert got[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].all() and got.sum() > 0


def test_a_mask_image_of_another_shape_or_with_nothing_to_move_is_refused_naming_the_field(tmp_path):
    wide = _png(tmp_path / "wide.png", np.ones((10, 30), bool))
    with pytest.raises(JobError) as e:
        mask_image_raster(wide, (20, 20))
    assert e.value.code is ErrorCode.E_INPUT_VALIDATION and e.value.details["field"] == "mask"
    assert "20x20" in e.value.message and "30x10" in e.value.message
    black = _png(tmp_path / "black.png", np.zeros((20, 20), bool))
    with pytest.raises(JobError) as e:
        mask_image_raster(black, (20, 20), "masks.person2")
    assert e.value.code is ErrorCode.E_INPUT_VALIDATION and e.value.details["field"] == "masks.person2"


def test_an_opaque_rgba_drawing_is_read_by_brightness(tmp_path):
    shape = np.zeros((12, 16), bool)
    shape[2:9, 3:10] = True
    level = np.where(shape, 255, 0).astype(np.uint8)
    Image.fromarray(np.dstack([level] * 3 + [np.full_like(level, 255)]), "RGBA").save(tmp_path / "m.png")
    assert np.array_equal(mask_image_raster(tmp_path / "m.png", (16, 12)), shape)


def test_per_speaker_masks_take_images_and_polygons_together(tmp_path):
    img = Image.new("RGB", (30, 20))
    right = np.zeros((20, 30), bool)
    right[:, 15:] = True
    _, (p1, p2) = speaker_regions_for_condition(
        {"person1": [[0, 0], [14, 0], [14, 19], [0, 19]], "person2": _png(tmp_path / "p2.png", right)}, img)
    assert np.array_equal(p2, right) and p1[:, :15].all() and not p1[:, 16:].any()


def _ctx(tmp_path: Path):
    """A job context whose inputs may also come from tmp_path/in (where the tests draw their masks)."""
    ctx = make_ctx(tmp_path, tmp_path / "cache")
    (tmp_path / "in").mkdir()
    return type(ctx)(cfg=ctx.cfg, engine=ctx.engine, extra_roots=(*ctx.extra_roots, tmp_path / "in"))


def _mask_job(**extra):
    return {"image": str(MEDIA / "portrait.png"), "audio": str(MEDIA / "speech_person1.wav"), "sampler": "turbo",
            "mode": "clip", "frame_num": 17, "motion_frame": 5, "seed": 11, **extra}


def test_a_job_with_an_image_mask_renders_the_frames_of_the_same_polygon(tmp_path):
    from tests.worker.test_job import decoded

    ctx = _ctx(tmp_path)
    w, h = Image.open(MEDIA / "portrait.png").size
    polygon = [[0, 0], [w // 2, 0], [w // 2, h], [0, h]]
    path = _png(tmp_path / "in" / "mask.png", rasterize_polygon(polygon, (w, h)))
    by_polygon, _ = run(ctx, _mask_job(mask=polygon), "poly")
    by_image, _ = run(ctx, _mask_job(mask=str(path)), "img")
    plain, _ = run(ctx, _mask_job(), "plain")
    same = abs(decoded(by_image["video_path"]) - decoded(by_polygon["video_path"]))
    other = abs(decoded(plain["video_path"]) - decoded(by_polygon["video_path"]))
    # same frames to within H.264 noise, told apart by contrast with the unmasked video (test_framing's rule)
    assert same.mean() < 4.0 and other.mean() > 4 * max(same.mean(), 0.5), (same.mean(), other.mean())


@pytest.mark.parametrize("bad, words", [
    ("speech_person1.wav", "image"),  # not an image: the fetch guard's sniffing refuses it
    ("wide.png", "not the shape"),  # the wrong picture
    ("black.png", "no pixel"),  # nothing may move
    ("cut.png", "mask"),  # a truncated PNG: the media guard's full decode refuses it
])
def test_a_bad_mask_image_is_e_input_validation_naming_mask(tmp_path, bad, words):
    ctx = _ctx(tmp_path)
    _png(tmp_path / "in" / "wide.png", np.ones((10, 40), bool))
    _png(tmp_path / "in" / "black.png", np.zeros((280, 224), bool))
    whole = _png(tmp_path / "in" / "whole.png", np.random.default_rng(0).random((280, 224)) > 0.5).read_bytes()
    (tmp_path / "in" / "cut.png").write_bytes(whole[: len(whole) // 2])
    ref = str(MEDIA / bad) if bad.endswith(".wav") else str(tmp_path / "in" / bad)
    with pytest.raises(JobError) as e:
        run(ctx, _mask_job(mask=ref))
    assert e.value.code is ErrorCode.E_INPUT_VALIDATION and e.value.message.startswith("mask")
    assert words in e.value.message and e.value.details.get("field") == "mask", e.value.message


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_exif_rotated_mask_lines_up_with_the_upright_picture(tmp_path, orientation):
    """A mask saved sideways with an EXIF orientation tag (as phone editors do) is read upright, the same way
    the picture is, so it covers the same pixels as the mask stored upright."""
    w, h = 48, 32
    upright = np.zeros((h, w), dtype=np.uint8)
    upright[4:14, 6:30] = 255  # off-centre, so every turn of it differs
    turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    stored = Image.fromarray(upright, "L").transpose(turn)  # the inverse of what orientation `o` asks for
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"mask{orientation}.jpg"
    stored.save(path, exif=exif, quality=100, subsampling=0)
    got = mask_image_raster(path, (w, h))
    assert got.shape == (h, w)
    assert np.array_equal(got, upright >= 128)
