"""The reference's per-frame scikit-image Lab colour transfer: the oracle for the engine's GPU path
(`worker.engine.sampling.color.match_colors`), shared by tests/engine/test_color.py and bench/color_gpu.py."""
from __future__ import annotations

import torch


def skimage_match(video: torch.Tensor, ref: torch.Tensor, strength: float) -> torch.Tensor:
    """The reference's per-frame numpy/scikit-image path ([3, T, H, W] in [-1, 1])."""
    import warnings

    import numpy as np
    from skimage import color as sk

    frames = np.clip((video.permute(1, 2, 3, 0).numpy() + 1.0) / 2.0, 0.0, 1.0)
    ref01 = np.clip((ref[:, :1].permute(1, 2, 3, 0).numpy() + 1.0) / 2.0, 0.0, 1.0)[0]
    rl = sk.rgb2lab(ref01)
    r_mean = [rl[..., j].mean() for j in range(3)]
    r_std = [rl[..., j].std() for j in range(3)]
    out = []
    for f in frames:
        lab = sk.rgb2lab(f)
        c = lab.copy()
        for j in range(3):
            m, s = lab[..., j].mean(), lab[..., j].std()
            c[..., j] = r_mean[j] if s == 0 else (c[..., j] - m) * (r_std[j] / s) + r_mean[j]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rgb = np.clip(sk.lab2rgb(c), 0.0, 1.0)
        out.append((1 - strength) * f + strength * rgb)
    return torch.from_numpy(np.stack(out) * 2.0 - 1.0).permute(3, 0, 1, 2)
