"""Video dubbing strength: start a chunk's sampling from its reference video's latents, noised part way.

Why: the sparse conditioning (one source frame per chunk) lets the model invent all motion; img2img-style
starting keeps the reference's gestures and head motion. With strength s in (0, 1] a chunk runs the last
round(steps * s) steps of its schedule (at least one) from x_t = (1 - t) * x0 + t * noise at that step's t,
the flow-matching interpolation the Euler sampler inverts; s = 1 is sampling from pure noise (the reference).
"""
from __future__ import annotations

import torch

from worker.engine.sampling.schedule import NUM_TRAIN_TIMESTEPS


def start_step(steps: int, strength: float) -> int:
    """Index of the first step run: the first `steps - round(steps * strength)` steps are skipped."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"dub_strength must be in (0, 1], got {strength}")
    return steps - max(1, min(steps, round(steps * strength)))


def noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean latents `x0` moved to timestep `t` (raw 0..1000 scale) along the straight path to `noise`."""
    sigma = (t.reshape(()) / NUM_TRAIN_TIMESTEPS).to(x0.device, x0.dtype)
    return (1.0 - sigma) * x0 + sigma * noise.to(x0.device, x0.dtype)
