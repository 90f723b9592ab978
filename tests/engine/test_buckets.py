"""Bucket choice and resize/centre-crop parity with the generation goldens."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.conftest import golden_cases, is_generation_case
from worker.engine.sampling.buckets import (
    BUCKET_TABLES,
    BUCKETS_480,
    BUCKETS_720,
    pick_bucket,
    resize_and_center_crop,
    resize_and_center_crop_masks,
    resize_and_center_crop_uint8,
)


CASES = golden_cases(is_generation_case)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_condition_image_matches_golden(case):
    meta = json.loads((case / "meta.json").read_text())
    table = meta.get("bucket_table_used") or BUCKET_TABLES[meta["size_bucket_name"]]
    table = {k: tuple(v) for k, v in table.items()}
    image = Image.open(case / "cond_image.png").convert("RGB")
    got = resize_and_center_crop(image, table)
    with safe_open(case / "tensors.safetensors", "pt") as f:
        keys = [k for k in f.keys() if k.endswith(".clip_input")]
        assert keys
        # Image input: every chunk's condition is the same image.
        for k in keys:
            want = f.get_tensor(k)
            assert got.shape == want.shape
            assert torch.equal(got, want), k
        if "chunk0.color_ref" in f.keys():
            assert torch.equal(got, f.get_tensor("chunk0.color_ref"))


def test_tables_are_real_tiers():
    assert len(BUCKETS_480) == 15 and len(BUCKETS_720) == 21
    for table in (BUCKETS_480, BUCKETS_720):
        for key, (hw, one) in table.items():
            h, w = hw
            assert one == 1
            assert h % 64 == 0 and w % 64 == 0
            assert abs(h / w - float(key)) < 0.06, key
    assert BUCKETS_480["1.00"][0] == [640, 640]
    assert BUCKETS_720["1.00"][0] == [960, 960]
    assert BUCKETS_480["0.50"][0] == [448, 896]
    assert BUCKETS_720["0.55"][0] == [704, 1280]


def test_pick_bucket_nearest_ratio():
    assert pick_bucket(1080, 1920, BUCKETS_480) == (448, 896)   # 0.5625 -> 0.50
    assert pick_bucket(1080, 1920, BUCKETS_720) == (704, 1280)  # -> 0.55
    assert pick_bucket(1000, 1000, BUCKETS_480) == (640, 640)
    assert pick_bucket(1920, 1080, BUCKETS_480) == (832, 448)   # 1.78 -> 1.86


def test_crop_offsets_follow_round_half_even():
    # 10x15 image to 4x4: scale 0.4 -> 4x6, left offset round(1.0) = 1.
    arr = np.arange(10 * 15 * 3, dtype=np.uint8).reshape(10, 15, 3)
    img = Image.fromarray(arr)
    out = resize_and_center_crop_uint8(img, (4, 4))
    full = torch.from_numpy(np.array(img.resize((6, 4), resample=Image.BILINEAR))).permute(2, 0, 1)
    assert torch.equal(out[0], full[:, :, 1:5])
    # 5 extra columns: round(2.5) = 2 (banker's rounding as in torchvision).
    img2 = Image.fromarray(np.zeros((8, 13, 3), dtype=np.uint8))
    out2 = resize_and_center_crop_uint8(img2, (8, 8))
    assert out2.shape == (1, 3, 8, 8)


def test_output_range_and_shape():
    img = Image.fromarray(np.full((30, 40, 3), 255, dtype=np.uint8))
    out = resize_and_center_crop(img, {"0.75": ([48, 64], 1)})
    assert out.shape == (1, 3, 1, 48, 64) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out))


def test_masks_crop_like_image():
    m = torch.zeros(3, 100, 130)
    m[0, :, :65] = 1
    m[1, :, 65:] = 1
    out = resize_and_center_crop_masks(m, (48, 64))
    assert out.shape == (3, 48, 64)
    assert out[0, :, :30].eq(1).all() and out[1, :, 34:].eq(1).all()
