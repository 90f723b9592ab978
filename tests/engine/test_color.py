"""Lab colour correction: parity with every chunk{i}.color_in/ref/out of the generation goldens."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from testkit.color_oracle import skimage_match
from tests.conftest import golden_cases, is_generation_case
from worker.engine.sampling.color import lab_reference, match_colors


CASES = golden_cases(is_generation_case)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_color_chunks_match_golden(case):
    meta = json.loads((case / "meta.json").read_text())
    strength = float(meta["color_correction_strength"])
    with safe_open(case / "tensors.safetensors", "pt") as f:
        chunks = sorted({k.split(".")[0] for k in f.keys() if k.endswith(".color_in")})
        assert chunks
        for c in chunks:
            src, ref, want = (f.get_tensor(f"{c}.{n}") for n in ("color_in", "color_ref", "color_out"))
            got = match_colors(src, ref, strength)
            assert got.shape == want.shape and got.dtype == want.dtype
            # numpy 2 vs the reference's numpy 1 changes skimage rounding by ~2e-5.
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=c)
            # A precomputed reference gives the same result and an unbatched call the same frames.
            torch.testing.assert_close(match_colors(src, lab_reference(ref), strength), got, atol=0, rtol=0)
            torch.testing.assert_close(match_colors(src[0], ref, strength), got[0], atol=0, rtol=0)


def test_strength_zero_is_identity():
    x = torch.rand(1, 3, 2, 8, 8) * 2 - 1
    assert match_colors(x, x[:, :, :1], 0.0) is x


def test_strength_out_of_range():
    x = torch.zeros(1, 3, 1, 4, 4)
    with pytest.raises(ValueError):
        match_colors(x, x, 1.5)


def test_self_reference_is_near_identity_and_blend_is_linear():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 1, 16, 16, generator=g) * 1.6 - 0.8
    full = match_colors(ref, ref, 1.0)
    torch.testing.assert_close(full, ref, atol=2e-3, rtol=0)
    src = torch.rand(1, 3, 2, 16, 16, generator=g) * 1.6 - 0.8
    half = match_colors(src, ref, 0.5)
    torch.testing.assert_close(half, (src + match_colors(src, ref, 1.0)) / 2, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- scikit-image as a reference


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("strength", [1.0, 0.35])
def test_torch_path_matches_skimage_on_random_frames(seed, strength):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(3, 5, 24, 40, generator=g) * 2.4 - 1.2  # some values outside [-1, 1]: clipped first
    video[:, :2, :12] = video[:, :2, :12] * 0.1 + 0.7  # near-saturated patches
    ref = torch.rand(3, 1, 24, 40, generator=g) * 0.4 - 0.2
    ref[seed % 3] += 0.6  # a strong tint: the transfer leaves the gamut and hits the negative-Z and RGB clips
    got = match_colors(video, ref, strength)
    torch.testing.assert_close(got, skimage_match(video, ref, strength), atol=1e-4, rtol=0)


def test_lab_conversions_match_skimage():
    import warnings

    from skimage import color as sk

    from worker.engine.sampling.color import lab_to_rgb, rgb_to_lab

    g = torch.Generator().manual_seed(7)
    rgb = torch.rand(3, 64, 64, generator=g)
    rgb[:, :4] = 0.02  # the linear segments of sRGB and f(t)
    want = torch.from_numpy(sk.rgb2lab(rgb.permute(1, 2, 0).numpy())).permute(2, 0, 1)
    torch.testing.assert_close(rgb_to_lab(rgb), want, atol=5e-4, rtol=0)  # L spans 0..100 in float32
    lab = torch.stack([torch.rand(64, 64, generator=g) * 100, *(torch.rand(2, 64, 64, generator=g) * 256 - 128)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # negative Z: clamped, as in ours
        want = torch.from_numpy(sk.lab2rgb(lab.double().permute(1, 2, 0).numpy())).permute(2, 0, 1)
    torch.testing.assert_close(lab_to_rgb(lab.double()), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(lab_to_rgb(lab).double(), want, atol=1e-5, rtol=0)


def test_flat_channel_takes_the_reference_mean():
    # A constant frame has zero Lab std: every pixel gets the reference mean. (The reference's float32 numpy
    # mean is inexact there, so its std comes out ~1e-5 and it amplifies rounding noise instead.)
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1
    flat = torch.full((3, 2, 16, 16), 0.3)
    got = match_colors(flat, ref, 1.0)
    stats = lab_reference(ref)
    from worker.engine.sampling.color import lab_to_rgb

    want = lab_to_rgb(torch.tensor(stats.mean).view(3, 1, 1, 1).expand(3, 2, 16, 16)) * 2 - 1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
