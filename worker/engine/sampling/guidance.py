"""Classifier-free guidance over text and audio, optional APG, and the Euler update.

Three DiT passes per step when the text scale is not 1 (cond, drop_text, uncond);
two when it is (cond, drop_audio), because then the text term vanishes and the
reference skips its pass; one (cond) when the audio scale is 1 as well, because then
both guidance terms vanish (the `lightning` preset: a step/CFG-distilled LoRA, no guidance).
APG (adaptive projected guidance, arXiv:2410.02416) replaces each guidance difference by its
component orthogonal to the conditional prediction after momentum and norm clipping.

Guidance reuse (`guidance_every` k > 1, off by default): the guidance branches run on every k-th
step only; the steps between run the conditional pass alone and add the guidance correction
(guided prediction minus conditional prediction) of the last full step. With the turbo preset's
4 steps and k = 2 that is 6 pass-equivalents a chunk instead of 8. It changes the output (the
correction is a step old), so it is an opt-in trade of quality for GPU time.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from worker.engine.settings import GuidanceConfig

COND, DROP_TEXT, UNCOND, DROP_AUDIO = "cond", "drop_text", "uncond", "drop_audio"


class _Momentum:
    """Running sum with geometric decay; starts at 0 so the first update is the value itself."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.average: torch.Tensor | float = 0

    def update(self, value: torch.Tensor) -> torch.Tensor:
        self.average = value + self.momentum * self.average
        return self.average


_SAMPLE_DIMS = [-1, -2, -3, -4]  # C, T, H, W of one sample


def apg_direction(
    diff: torch.Tensor,
    pred_cond: torch.Tensor,
    momentum: _Momentum | None = None,
    norm_threshold: float = 55.0,
    eta: float = 0.0,
) -> torch.Tensor:
    """Adaptive projected guidance term for one guidance difference."""
    if momentum is not None:
        diff = momentum.update(diff)
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=_SAMPLE_DIMS, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), norm_threshold / norm)
    dtype = diff.dtype
    d64, c64 = diff.double(), pred_cond.double()
    unit = F.normalize(c64, dim=_SAMPLE_DIMS)
    parallel = (d64 * unit).sum(dim=_SAMPLE_DIMS, keepdim=True) * unit
    orthogonal = d64 - parallel
    return orthogonal.to(dtype) + eta * parallel.to(dtype)


class Guider:
    """Combines the per-branch predictions of one step; holds APG momentum for one chunk."""

    def __init__(self, config: GuidanceConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget APG momentum and any kept correction; the reference starts fresh for every chunk."""
        self._text_momentum = _Momentum(self.config.apg_momentum)
        self._audio_momentum = _Momentum(self.config.apg_momentum)
        self._correction: torch.Tensor | None = None

    def combine(self, preds: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The guided prediction of a full step (every branch ran)."""
        guided = self._combine(preds)
        if self.config.guidance_every > 1:
            self._correction = guided - preds[COND]
        return guided

    def reuse(self, cond: torch.Tensor) -> torch.Tensor:
        """The guided prediction of a step that ran the conditional pass alone."""
        if self._correction is None:
            raise RuntimeError("no full guidance step yet in this chunk")
        return cond + self._correction

    def _combine(self, preds: Mapping[str, torch.Tensor]) -> torch.Tensor:
        c = self.config
        cond = preds[COND]
        if c.one_pass:  # every guidance term is multiplied by (scale - 1) = 0
            return cond
        if c.use_apg:
            thr = c.apg_norm_threshold
            if c.two_pass:
                d_audio = cond - preds[DROP_AUDIO]
                return cond + (c.audio_guide_scale - 1) * apg_direction(d_audio, cond, self._audio_momentum, thr)
            d_text = cond - preds[DROP_TEXT]
            d_audio = preds[DROP_TEXT] - preds[UNCOND]
            return (
                cond
                + (c.text_guide_scale - 1) * apg_direction(d_text, cond, self._text_momentum, thr)
                + (c.audio_guide_scale - 1) * apg_direction(d_audio, cond, self._audio_momentum, thr)
            )
        if c.two_pass:
            drop_audio = preds[DROP_AUDIO]
            return drop_audio + c.audio_guide_scale * (cond - drop_audio)
        drop_text, uncond = preds[DROP_TEXT], preds[UNCOND]
        return uncond + c.text_guide_scale * (cond - drop_text) + c.audio_guide_scale * (drop_text - uncond)


def euler_step(
    latent: torch.Tensor, pred: torch.Tensor, t_now: torch.Tensor, t_next: torch.Tensor, num_timesteps: int = 1000
) -> torch.Tensor:
    """One flow-matching Euler step from t_now to t_next (tensors of shape [1], raw 0..1000 scale).

    The operand order (negate, scale by dt/1000, add) mirrors the reference for float32 parity.
    """
    dt = (t_now - t_next) / num_timesteps
    return latent + (-pred) * dt.reshape((-1,) + (1,) * (pred.dim() - 1))
