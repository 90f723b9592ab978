"""Lab-space colour correction that keeps long generations from drifting in tint.

Each decoded chunk is pulled back to the colour statistics of the first condition image: per frame
and Lab channel, mean/std transfer to the reference's statistics, back to RGB, clip, linear blend.

The conversions are the ones scikit-image's `rgb2lab` / `lab2rgb` compute (the reference ran them per
frame on the CPU, 7.9 s for an 81-frame 480x832 chunk): sRGB companding, the sRGB→XYZ matrix, the
D65 2° white point, CIE f(t) with its 0.008856 threshold and linear segment, and on the way back the
negative-Z clamp and the final [0, 1] clip. Here they are written in torch, vectorised over all frames,
and run on the frames' device in float32, so the chunk never leaves the GPU. Parity with scikit-image
(float32 in, float32 arithmetic there too) is at float32 rounding level: tests/engine/test_color.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# sRGB (linear) -> CIE XYZ, as scikit-image tabulates it; its inverse is computed in float64 like theirs.
_XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65_2 = (0.95047, 1.0, 1.08883)
_EPS = 0.008856  # CIE f(t): cube root above, 7.787 t + 16/116 below
_EPS_INV = 0.2068966  # the same threshold on the f side
_FRAMES_PER_GROUP = 16  # bounds the temporaries (~12 copies of a group) on small cards


@dataclass(frozen=True)
class LabReference:
    """Per-channel Lab mean and std (population) of the reference image, computed once per generation."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _mix(m: np.ndarray, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> list[torch.Tensor]:
    """3x3 matrix times channel planes, element-wise (no matmul, so no TF32 path on the GPU)."""
    return [float(m[i, 0]) * c0 + float(m[i, 1]) * c1 + float(m[i, 2]) * c2 for i in range(3)]


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[3, ...] RGB in [0, 1] -> [3, ...] CIE Lab (D65, 2°), in the input's floating dtype."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    xyz = _mix(_XYZ_FROM_RGB, lin[0], lin[1], lin[2])
    f = []
    for v, white in zip(xyz, _WHITE_D65_2):
        t = v / white
        f.append(torch.where(t > _EPS, t.pow(1.0 / 3.0), 7.787 * t + 16.0 / 116.0))
    fx, fy, fz = f
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)])


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """[3, ...] CIE Lab (D65, 2°) -> [3, ...] RGB clipped to [0, 1]; negative Z is clamped to 0 first."""
    fy = (lab[0] + 16.0) / 116.0
    fx = lab[1] / 500.0 + fy
    fz = (fy - lab[2] / 200.0).clamp_min(0.0)
    xyz = []
    for t, white in zip((fx, fy, fz), _WHITE_D65_2):
        xyz.append(torch.where(t > _EPS_INV, t * t * t, (t - 16.0 / 116.0) / 7.787) * white)
    lin = torch.stack(_mix(_RGB_FROM_XYZ, *xyz))
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(0.0031308).pow(1.0 / 2.4) - 0.055, lin * 12.92)
    return rgb.clamp_(0.0, 1.0)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] float32, clipped."""
    return ((x.float() + 1.0) / 2.0).clamp_(0.0, 1.0)


def _plane_stats(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std over the last two dims, accumulated in float64 (a constant plane gives std 0
    exactly, as the reference's zero-std branch expects)."""
    std, mean = torch.std_mean(lab.double(), dim=(-2, -1), correction=0)
    return mean, std


def lab_reference(reference: torch.Tensor) -> LabReference:
    """Statistics of a reference image given as [1, 3, 1, H, W], [3, 1, H, W] or [3, H, W] in [-1, 1]."""
    ref = reference
    if ref.dim() == 5:
        ref = ref[0]
    if ref.dim() == 4:
        ref = ref[:, 0]
    with torch.no_grad():
        mean, std = _plane_stats(rgb_to_lab(_to_unit(ref)))
    mean, std = mean.tolist(), std.tolist()
    return LabReference(mean=tuple(mean), std=tuple(std))


def match_colors(video: torch.Tensor, reference: torch.Tensor | LabReference, strength: float) -> torch.Tensor:
    """Colour-correct `video` ([1, 3, T, H, W] or [3, T, H, W], [-1, 1]) towards `reference`.

    Runs on `video`'s device; returns the same shape, dtype and device. Strength 0 returns the input.
    """
    if strength == 0.0:
        return video
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour correction strength must be in [0, 1], got {strength}")
    ref = reference if isinstance(reference, LabReference) else lab_reference(reference)
    batched = video.dim() == 5
    if batched and video.shape[0] != 1:
        raise ValueError("colour correction expects batch size 1")
    src = video[0] if batched else video
    out = torch.empty(src.shape, dtype=torch.float32, device=src.device)
    ref_mean = torch.tensor(ref.mean, dtype=torch.float64, device=src.device)[:, None]
    ref_std = torch.tensor(ref.std, dtype=torch.float64, device=src.device)[:, None]
    with torch.no_grad():
        for t0 in range(0, src.shape[1], _FRAMES_PER_GROUP):
            frame = _to_unit(src[:, t0 : t0 + _FRAMES_PER_GROUP])  # [3, g, H, W]
            lab = rgb_to_lab(frame)
            mean, std = _plane_stats(lab)  # [3, g]
            flat = std == 0
            scale = torch.where(flat, torch.zeros_like(std), ref_std / torch.where(flat, torch.ones_like(std), std))
            shift = torch.where(flat, ref_mean.expand_as(mean), ref_mean - mean * scale)
            corrected = lab * scale.float()[..., None, None] + shift.float()[..., None, None]
            rgb = lab_to_rgb(corrected)
            out[:, t0 : t0 + _FRAMES_PER_GROUP] = ((1.0 - strength) * frame + strength * rgb) * 2.0 - 1.0
    result = out.to(dtype=video.dtype)
    return result[None] if batched else result
