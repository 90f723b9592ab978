"""Sampling timestep schedule of the InfiniteTalk flow-matching sampler.

The reference builds the raw grid with numpy in float32 and shifts it with
float32 torch arithmetic; we do the same so the DiT sees bit-identical
timesteps (the sinusoidal embedding is sensitive to the last ulp at t~1000).
"""
from __future__ import annotations

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_timestep(t: torch.Tensor, shift: float, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Map a raw timestep through the SD3-style shift, keeping the operand order of the reference."""
    s = t / num_timesteps
    s = shift * s / (1 + (shift - 1) * s)
    return s * num_timesteps


def timesteps(steps: int, shift: float, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Float32 tensor of `steps + 1` timesteps, from `num_timesteps` down to 0 (the final 0 is the Euler target)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    raw = np.linspace(num_timesteps, 1, steps, dtype=np.float32)
    out = [shift_timestep(torch.tensor([float(v)], dtype=torch.float32), shift, num_timesteps) for v in raw]
    out.append(shift_timestep(torch.tensor([0.0], dtype=torch.float32), shift, num_timesteps))
    return torch.cat(out)
