"""Lab-space colour correction that keeps long generations from drifting in tint.

Each decoded chunk is pulled back to the colour statistics of the first
condition image. Numerics follow the reference: numpy float32 input, scikit-image
Lab conversions, per-frame per-channel mean/std transfer, clip, linear blend.
The reference ran with numpy 1.x; numpy 2's scalar promotion changes rounding
inside scikit-image's conversions by ~2e-5, far below the frame tolerance.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from skimage import color as skcolor


@dataclass(frozen=True)
class LabReference:
    """Per-channel Lab mean and std of the reference image (computed once per generation)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _to_unit_hwc(x: torch.Tensor) -> np.ndarray:
    """[C, T, H, W] in [-1, 1] -> numpy [T, H, W, C] in [0, 1] (clipped)."""
    arr = x.permute(1, 2, 3, 0).detach().cpu().numpy()
    return np.clip((arr + 1.0) / 2.0, 0.0, 1.0)


def lab_reference(reference: torch.Tensor) -> LabReference:
    """Statistics of a reference image given as [1, 3, 1, H, W], [3, 1, H, W] or [3, H, W] in [-1, 1]."""
    ref = reference
    if ref.dim() == 5:
        ref = ref[0]
    if ref.dim() == 3:
        ref = ref[:, None]
    ref01 = _to_unit_hwc(ref[:, :1])[0]
    lab = skcolor.rgb2lab(ref01)
    mean = tuple(lab[:, :, j].mean() for j in range(3))
    std = tuple(lab[:, :, j].std() for j in range(3))
    return LabReference(mean=mean, std=std)  # numpy scalars keep the reference dtype


def match_colors(video: torch.Tensor, reference: torch.Tensor | LabReference, strength: float) -> torch.Tensor:
    """Colour-correct `video` ([1, 3, T, H, W] or [3, T, H, W], [-1, 1]) towards `reference`.

    Returns the same shape and dtype; strength 0 returns the input unchanged.
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
    frames01 = _to_unit_hwc(src)

    out_frames = []
    for frame in frames01:
        lab = skcolor.rgb2lab(frame)
        corrected = lab.copy()
        for j in range(3):
            m_src, s_src = lab[:, :, j].mean(), lab[:, :, j].std()
            if s_src == 0:
                corrected[:, :, j] = ref.mean[j]
            else:
                corrected[:, :, j] = (corrected[:, :, j] - m_src) * (ref.std[j] / s_src) + ref.mean[j]
        with warnings.catch_warnings():
            # Out-of-gamut Lab values are expected after the transfer; the clip below handles them.
            warnings.simplefilter("ignore", UserWarning)
            rgb = np.clip(skcolor.lab2rgb(corrected), 0.0, 1.0)
        out_frames.append((1 - strength) * frame + strength * rgb)

    stacked = np.stack(out_frames, axis=0) * 2.0 - 1.0
    result = torch.from_numpy(stacked).permute(3, 0, 1, 2).contiguous().to(device=video.device, dtype=video.dtype)
    return result[None] if batched else result
