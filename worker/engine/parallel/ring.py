"""Ring attention: each rank keeps its queries and the key/value blocks travel once around the ring.

Every block gives a partial softmax result and its log-sum-exp; merging them with the online-softmax rule
(o = sum_i exp(lse_i - lse) o_i, lse = logsumexp_i lse_i) gives exactly the full attention up to float
rounding. Works for any rank count (heads need not divide), at the price of world-1 point-to-point
exchanges of K and V per layer.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from worker.engine.parallel.comm import start_ring_exchange

# Queries per piece of the plain (matmul + softmax) path: bounds the score matrix's memory.
_QUERY_CHUNK = 4096
_HALF = (torch.float16, torch.bfloat16)


def _flash_with_lse(q, k, v, scale):
    """CUDA half-precision path: the flash kernel also returns the log-sum-exp ([B, N, L] float32)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, False, False, scale=scale
    )[:2]
    return out.transpose(1, 2).float(), lse.transpose(1, 2).float()


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q `[B, Lq, N, D]` to one key block -> (output `[B, Lq, N, D]` float32,
    log-sum-exp `[B, Lq, N]` float32). Computed in float32 (float64 for float64 inputs)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    if q.is_cuda and q.dtype in _HALF:
        try:
            return _flash_with_lse(q, k.to(q.dtype), v.to(q.dtype), scale)
        except RuntimeError:  # no flash kernel for this GPU / head size: the exact plain path below
            pass
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    kf = k.to(work).transpose(1, 2)  # [B, N, Lk, D]
    vf = v.to(work).transpose(1, 2)
    outs, lses = [], []
    for start in range(0, q.shape[1], _QUERY_CHUNK):
        qf = q[:, start : start + _QUERY_CHUNK].to(work).transpose(1, 2)  # [B, N, Lc, D]
        scores = (qf @ kf.transpose(-2, -1)) * scale
        lse = torch.logsumexp(scores, dim=-1)  # [B, N, Lc]
        outs.append((torch.exp(scores - lse[..., None]) @ vf).transpose(1, 2))
        lses.append(lse.transpose(1, 2))
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def merge(acc: torch.Tensor | None, acc_lse: torch.Tensor | None, out: torch.Tensor, lse: torch.Tensor):
    """Online-softmax merge of two partial results over disjoint key sets."""
    if acc is None:
        return out, lse
    new_lse = torch.logaddexp(acc_lse, lse)
    acc = acc * torch.exp(acc_lse - new_lse)[..., None] + out * torch.exp(lse - new_lse)[..., None]
    return acc, new_lse


def ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid_of: list[int], rank: int, world: int, group: Any
) -> torch.Tensor:
    """q, k, v `[B, Lc, N, D]`: this rank's tokens. `valid_of[r]`: how many of rank r's tokens are real
    (the rest pad the sequence to a multiple of the rank count and are never attended)."""
    kv = torch.stack([k, v.to(k.dtype)])
    acc = acc_lse = None
    for step in range(world):
        src = (rank - step) % world
        pending = start_ring_exchange(kv, rank, world, group) if step < world - 1 else None
        n = valid_of[src]
        if n > 0:
            out, lse = block_attention(q, kv[0, :, :n], kv[1, :, :n])
            acc, acc_lse = merge(acc, acc_lse, out, lse)
        if pending is not None:
            for req in pending[1]:
                req.wait()
            kv = pending[0]
    if acc is None:  # no real key anywhere: cannot happen for a non-empty sequence
        raise ValueError("ring attention over an empty sequence")
    return acc.to(q.dtype)
