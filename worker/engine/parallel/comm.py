"""The collectives sequence parallelism needs, on `[B, L, ...]` token tensors (no autograd: inference only).

Every helper takes the process group explicitly and works on any backend that has all_gather,
all_to_all_single and point-to-point (NCCL on GPUs, gloo on CPU).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def all_gather_cat(x: torch.Tensor, dim: int, group: Any, world: int) -> torch.Tensor:
    """Every rank's equally-shaped `x` concatenated along `dim` in rank order."""
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def seq_to_heads(x: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """`[S, B, Lc, N, D]` (this rank's tokens, all heads; S stacked tensors such as q, k, v) ->
    `[S, B, world*Lc, N/world, D]` (all tokens, this rank's head group): one all-to-all."""
    s, b, lc, n, d = x.shape
    send = x.reshape(s, b, lc, world, n // world, d).permute(3, 0, 1, 2, 4, 5).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[src] holds rank src's tokens of this rank's heads.
    return recv.permute(1, 2, 0, 3, 4, 5).reshape(s, b, world * lc, n // world, d)


def heads_to_seq(x: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """Inverse of `seq_to_heads` for one tensor: `[B, world*Lc, N/world, D]` -> `[B, Lc, N, D]`."""
    b, lp, nh, d = x.shape
    lc = lp // world
    send = x.reshape(b, world, lc, nh, d).permute(1, 0, 2, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[src] holds this rank's tokens of rank src's heads; head groups are in rank order.
    return recv.permute(1, 2, 0, 3, 4).reshape(b, lc, world * nh, d)


def start_ring_exchange(x: torch.Tensor, rank: int, world: int, group: Any) -> tuple[torch.Tensor, list]:
    """Start sending `x` to the next rank and receiving the previous rank's tensor of the same shape;
    returns (receive buffer, requests to wait on), so the caller computes while the blocks travel."""
    recv = torch.empty_like(x)
    nxt, prev = (rank + 1) % world, (rank - 1) % world
    peers = [dist.get_global_rank(group, r) for r in (nxt, prev)] if group is not None else [nxt, prev]
    ops = [dist.P2POp(dist.isend, x, peers[0], group=group), dist.P2POp(dist.irecv, recv, peers[1], group=group)]
    return recv, dist.batch_isend_irecv(ops)
