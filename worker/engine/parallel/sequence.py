"""One DiT forward's token split: which latent tokens this rank owns and the parallel versions of the
three places where a token needs other ranks' tokens (self-attention, the speaker map, the final output).

Tokens (frame-major, as the DiT lays them out) are cut into `world` equal chunks; the sequence is padded
at its end to a multiple of the rank count. Pad tokens are never attended as keys and never leave the
forward, so the result is the single-GPU result up to float rounding. The split ignores frame
boundaries (equal work per rank); the audio cross-attention routes each token to its own frame's audio.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from worker.engine.kernels.attention import attention
from worker.engine.models.audio_adapter import speaker_attention_map
from worker.engine.parallel.comm import all_gather_cat, heads_to_seq, seq_to_heads
from worker.engine.parallel.context import ParallelContext
from worker.engine.parallel.ring import ring_attention


class SequenceShard:
    """This rank's share of a sequence of `length` tokens (`frame_tokens` per latent frame)."""

    def __init__(self, ctx: ParallelContext, length: int, frame_tokens: int, num_heads: int) -> None:
        if length < 1:
            raise ValueError("cannot split an empty token sequence")
        self.ctx = ctx
        self.length = length
        self.frame_tokens = frame_tokens
        self.method = ctx.method_for(num_heads)
        self.chunk = math.ceil(length / ctx.world)
        self.start = ctx.rank * self.chunk
        self.valid_of = [max(0, min(self.chunk, length - r * self.chunk)) for r in range(ctx.world)]
        self.valid = self.valid_of[ctx.rank]

    # ------------------------------------------------------------------ split / gather

    def split(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's `chunk` entries of a full-length tensor along `dim` (zero rows past the end)."""
        part = x.narrow(dim, self.start, self.valid) if self.valid else x.narrow(dim, 0, 0)
        if self.valid < self.chunk:
            pad = list(part.shape)
            pad[dim] = self.chunk - self.valid
            part = torch.cat([part, part.new_zeros(pad)], dim=dim)
        return part

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Full-length tensor from every rank's chunk (pad rows dropped); the same on every rank."""
        full = all_gather_cat(x, dim, self.ctx.group, self.ctx.world)
        return full.narrow(dim, 0, self.length)

    # ------------------------------------------------------------------ attention

    @torch.compiler.disable
    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Full-sequence softmax attention of this rank's queries; q, k, v `[B, chunk, N, D]` after RoPE."""
        if self.method == "ring":
            return ring_attention(q, k, v, self.valid_of, self.ctx.rank, self.ctx.world, self.ctx.group)
        dtype = v.dtype
        qkv = seq_to_heads(torch.stack([q.to(dtype), k.to(dtype), v]), self.ctx.group, self.ctx.world)
        n = self.length  # pad tokens are cut before the kernel: the same call as one GPU on its heads
        out = attention(qkv[0, :, :n], qkv[1, :, :n], qkv[2, :, :n]).to(q.dtype)
        if n < qkv.shape[2]:
            out = F.pad(out, (0, 0, 0, 0, 0, qkv.shape[2] - n))
        return heads_to_seq(out, self.ctx.group, self.ctx.world)

    @torch.compiler.disable
    def speaker_map(self, q: torch.Tensor, k: torch.Tensor, frame_tokens: int, token_masks: torch.Tensor) -> torch.Tensor:
        """The speaker attention map of the whole sequence `[B, classes, L]`, identical on every rank.

        Each rank scores its own queries against the first latent frame's keys (gathered from the ranks
        that own them), then the per-token maps are gathered: the min-max normalisation and arg-max that
        route tokens to speakers then see exactly the values one GPU would."""
        ref_k = self.gather_prefix(k, frame_tokens)
        local = speaker_attention_map(q, ref_k, frame_tokens, token_masks)
        return self.gather(local, dim=2)

    def gather_prefix(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The first `n` tokens of the full sequence, on every rank."""
        if n <= self.chunk:  # all on rank 0: one broadcast
            import torch.distributed as dist

            part = x[:, :n].contiguous()
            src = 0 if self.ctx.group is None else dist.get_global_rank(self.ctx.group, 0)
            dist.broadcast(part, src, group=self.ctx.group)
            return part
        return all_gather_cat(x, 1, self.ctx.group, self.ctx.world)[:, :n]

    @torch.compiler.disable
    def audio_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int) -> torch.Tensor:
        """Each of this rank's tokens attends to its own latent frame's audio tokens.

        q `[B, chunk, N, D]`; k, v `[B*frames, A, N, D]`. The chunk may start and end inside frames: its
        tokens are placed in a frame-aligned buffer covering the frames it touches (partial frames
        zero-filled), which keeps the same per-frame attention call as one GPU."""
        b, lc, n, d = q.shape
        s = self.frame_tokens
        out = q.new_zeros(b, lc, n, d)
        if self.valid == 0:
            return out
        f0, f1 = self.start // s, (self.start + self.valid - 1) // s
        nf = f1 - f0 + 1
        off = self.start - f0 * s
        buf = q.new_zeros(b, nf * s, n, d)
        buf[:, off : off + self.valid] = q[:, : self.valid]
        a = k.shape[1]
        ks = k.reshape(b, frames, a, n, d)[:, f0 : f1 + 1].reshape(b * nf, a, n, d)
        vs = v.reshape(b, frames, a, n, d)[:, f0 : f1 + 1].reshape(b * nf, a, n, d)
        res = attention(buf.reshape(b * nf, s, n, d), ks, vs).reshape(b, nf * s, n, d)
        out[:, : self.valid] = res[:, off : off + self.valid]
        return out


@functools.lru_cache(maxsize=16)
def shard_for(ctx: ParallelContext, length: int, frame_tokens: int, num_heads: int) -> SequenceShard:
    """One shard object per shape, reused by every forward (a compiled block then sees the same object)."""
    return SequenceShard(ctx, length, frame_tokens, num_heads)
