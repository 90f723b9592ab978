"""Lab colour correction: parity with every chunk{i}.color_in/ref/out of the generation goldens."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import golden_cases
from worker.engine.color import lab_reference, match_colors


def _is_generation_case(p: Path) -> bool:
    if not ((p / "cond_image.png").is_file() and (p / "tensors.safetensors").is_file() and (p / "meta.json").is_file()):
        return False
    meta = json.loads((p / "meta.json").read_text())
    return "mode" in meta and "rng_calls" in meta


CASES = golden_cases(_is_generation_case)


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
