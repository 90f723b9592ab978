"""Aspect-ratio buckets and the resize/centre-crop that maps a condition image onto one.

InfiniteTalk only ever renders at a fixed set of (height, width) pairs per
resolution tier; picking the bucket and cropping must follow the reference
exactly because the crop offsets decide which pixels the model conditions on.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Keys are height/width ratios (as strings, matched numerically); values are
# ([height, width], 1), the layout used by the reference tables.
BucketTable = Mapping[str, tuple[list[int], int]]

BUCKETS_480: dict[str, tuple[list[int], int]] = {
    "0.26": ([320, 1216], 1), "0.38": ([384, 1024], 1), "0.50": ([448, 896], 1), "0.67": ([512, 768], 1),
    "0.82": ([576, 704], 1), "1.00": ([640, 640], 1), "1.22": ([704, 576], 1), "1.50": ([768, 512], 1),
    "1.86": ([832, 448], 1), "2.00": ([896, 448], 1), "2.50": ([960, 384], 1), "2.83": ([1088, 384], 1),
    "3.60": ([1152, 320], 1), "3.80": ([1216, 320], 1), "4.00": ([1280, 320], 1),
}

BUCKETS_720: dict[str, tuple[list[int], int]] = {
    "0.22": ([448, 2048], 1), "0.29": ([512, 1792], 1), "0.36": ([576, 1600], 1), "0.45": ([640, 1408], 1),
    "0.55": ([704, 1280], 1), "0.63": ([768, 1216], 1), "0.76": ([832, 1088], 1), "0.88": ([896, 1024], 1),
    "1.00": ([960, 960], 1), "1.14": ([1024, 896], 1), "1.31": ([1088, 832], 1), "1.50": ([1152, 768], 1),
    "1.58": ([1216, 768], 1), "1.82": ([1280, 704], 1), "1.91": ([1344, 704], 1), "2.20": ([1408, 640], 1),
    "2.30": ([1472, 640], 1), "2.67": ([1536, 576], 1), "2.89": ([1664, 576], 1), "3.62": ([1856, 512], 1),
    "3.75": ([1920, 512], 1),
}

BUCKET_TABLES: dict[str, dict[str, tuple[list[int], int]]] = {
    "infinitetalk-480": BUCKETS_480,
    "infinitetalk-720": BUCKETS_720,
}


def pick_bucket(height: int, width: int, table: BucketTable) -> tuple[int, int]:
    """(target_h, target_w) of the bucket whose ratio key is nearest to height/width; ties go to the earlier key."""
    ratio = height / width
    key = sorted(table.keys(), key=lambda k: abs(float(k) - ratio))[0]
    th, tw = table[key][0]
    return int(th), int(tw)


def _scaled_size(h: int, w: int, th: int, tw: int) -> tuple[int, int]:
    s = max(th / h, tw / w)
    return math.ceil(s * h), math.ceil(s * w)


def _center_crop(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Crop the last two dims with torchvision's centre rule (offsets rounded half-to-even)."""
    h, w = x.shape[-2], x.shape[-1]
    if h < th or w < tw:
        raise ValueError(f"cannot centre-crop {h}x{w} to {th}x{tw}")
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return x[..., top:top + th, left:left + tw]


def resize_and_center_crop_uint8(image: Image.Image, target: tuple[int, int]) -> torch.Tensor:
    """uint8 [1, 3, th, tw] after bilinear PIL resize (covering the target) and centre crop."""
    th, tw = target
    image = image.convert("RGB") if image.mode != "RGB" else image
    fh, fw = _scaled_size(image.height, image.width, th, tw)
    resized = np.array(image.resize((fw, fh), resample=Image.BILINEAR))
    t = torch.from_numpy(resized)[None].permute(0, 3, 1, 2).contiguous()
    return _center_crop(t, th, tw)


def resize_and_center_crop(image: Image.Image, bucket_table: BucketTable) -> torch.Tensor:
    """Condition image as float32 [1, 3, 1, th, tw] in [-1, 1], using the bucket nearest to its aspect ratio."""
    th, tw = pick_bucket(image.height, image.width, bucket_table)
    return to_model_range(resize_and_center_crop_uint8(image, (th, tw)))


def resize_to_target(image: Image.Image, target: tuple[int, int]) -> torch.Tensor:
    """Same as `resize_and_center_crop` but for a known (th, tw), e.g. later frames of a dubbing source."""
    return to_model_range(resize_and_center_crop_uint8(image, target))


def to_model_range(cropped_uint8: torch.Tensor) -> torch.Tensor:
    x = cropped_uint8[:, :, None, :, :] / 255
    return (x - 0.5) * 2


def resize_and_center_crop_masks(masks: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    """[K, H, W] masks: nearest resize covering `target`, then the same centre crop as the image."""
    th, tw = target
    h, w = masks.shape[-2], masks.shape[-1]
    fh, fw = _scaled_size(h, w, th, tw)
    resized = F.interpolate(masks[None].float(), size=(fh, fw), mode="nearest").contiguous()
    return _center_crop(resized, th, tw)[0]
