"""fp8 (e4m3) attention on Hopper: the quantisation of q/k/v around FlashAttention-3's fp8 forward.

Why: the 480p self-attention is ~1.4 s of a ~2.5 s fp8-linear DiT forward; FA3's fp8 kernel runs it about
1.3x faster than FA3 in bf16. Plain e4m3 rounding of q/k/v costs accuracy, which is recovered the way
SageAttention does it, within what FA3's kernel accepts:

- K is smoothed by subtracting its mean over the tokens, per batch, head and channel. Every score of one
  query row then shifts by the same constant q . mean(k), which softmax cancels exactly; what is left for
  e4m3 is the part of K that differs between tokens, without the large shared offset that would otherwise
  set the scale.
- V is smoothed the same way and its mean added back to the output: each softmax row sums to one, so
  attn(q, k, v - m) + m == attn(q, k, v) exactly, and the mean no longer passes through e4m3 twice.
- Scales are per batch element and head (FA3 takes one float32 descale per (batch, kv head); per-block
  scales as in SageAttention would need a kernel that takes them). Each head's largest magnitude maps onto
  448, the largest e4m3 value.

Everything here is plain torch, so under torch.compile Inductor fuses the reductions and casts into the
kernels that produce q, k and v (RMS norm, RoPE) and only the kernel call stays opaque. `emulate` is a
float32 reference of what the kernel computes from the quantised operands (P rounded to e4m3 before the
PV product, the row sums taken before that rounding), so the arithmetic is testable on any CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from worker.engine.formats.bundle import FP8_MAX

FP8 = torch.float8_e4m3fn
# Attention shorter than this (text/image/audio cross-attention: <= 512 keys) stays in bf16: it is a
# small share of the time and memory-bound, so fp8 would cost accuracy for nothing.
MIN_FP8_TOKENS = 4096


@dataclass(frozen=True)
class Quantized:
    """e4m3 operands `[B, L, N, C]` and their float32 descales `[B, N]`; `v_mean` `[B, 1, N, C]` or None."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_descale: torch.Tensor
    k_descale: torch.Tensor
    v_descale: torch.Tensor
    v_mean: torch.Tensor | None


def token_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens (dim 1) in float32, kept as `[B, 1, N, C]`."""
    return x.float().mean(dim=1, keepdim=True)


def head_scales(x: torch.Tensor) -> torch.Tensor:
    """Per (batch, head) scale `[B, N]` float32: amax over tokens and channels / 448 (1 for an all-zero head)."""
    amax = x.abs().amax(dim=(1, 3)).float()
    return torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x / scale` rounded to e4m3 (saturating), scale `[B, N]` broadcast over tokens and channels."""
    return (x.float() / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def quantize(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, smooth_k: bool = True,
             smooth_v: bool = True) -> Quantized:
    """q/k/v `[B, L, N, C]` -> e4m3 operands with per-head scales, K (and V) smoothed by their token mean."""
    kf = k.float() - token_mean(k) if smooth_k else k.float()
    v_mean = token_mean(v) if smooth_v else None
    vf = v.float() - v_mean if smooth_v else v.float()
    qs, ks, vs = head_scales(q), head_scales(kf), head_scales(vf)
    return Quantized(to_fp8(q, qs), to_fp8(kf, ks), to_fp8(vf, vs), qs, ks, vs, v_mean)


def finish(out: torch.Tensor, quant: Quantized, dtype: torch.dtype) -> torch.Tensor:
    """The kernel's output plus V's mean (when V was smoothed), in `dtype`."""
    if quant.v_mean is None:
        return out.to(dtype)
    return (out.float() + quant.v_mean).to(dtype)


def emulate(quant: Quantized, softmax_scale: float | None = None) -> torch.Tensor:
    """float32 reference of FA3's fp8 forward on the quantised operands (before `finish`): scores from the
    dequantised q/k, softmax with the row sums of unrounded probabilities, P rounded to e4m3 (its values lie
    in [0, 1], no scale) for the product with the e4m3 V, then V's descale. `[B, Lq, N, C]` float32."""
    c = quant.q.shape[-1]
    scale = 1.0 / math.sqrt(c) if softmax_scale is None else softmax_scale
    q = quant.q.float().transpose(1, 2)  # [B, N, L, C]
    k = quant.k.float().transpose(1, 2)
    v = quant.v.float().transpose(1, 2)
    qk_descale = (quant.q_descale * quant.k_descale)[:, :, None, None]
    s = (q @ k.transpose(-1, -2)) * (qk_descale * scale)
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    row_sum = p.sum(dim=-1, keepdim=True)
    p8 = p.to(FP8).float()
    out = (p8 @ v) * quant.v_descale[:, :, None, None] / row_sum
    return out.transpose(1, 2)


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 (0 for two zero tensors)."""
    ref64 = ref.double()
    denom = ref64.norm()
    diff = (got.double() - ref64).norm()
    return float(diff / denom) if denom > 0 else float(diff)
