"""Building blocks of the Wan2.1 I2V transformer as InfiniteTalk uses them.

Attribute names are the checkpoint's key names (`self_attn.q`, `cross_attn.k_img`, `norm3`, `modulation`,
...), so published weights load strictly. Numerics follow the reference: layer norms and the adaLN
modulation run in float32 whatever the parameter dtype (for bf16/fp16 activations through fused kernels that
compute in float32 and round once), RMS norms normalise in float32, RoPE in float64 (float32 for half activations).
Tensors are batch-first `[B, L, C]` throughout so guidance passes can share one forward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.kernels.attention import attention
from worker.engine.models.audio_adapter import AudioCrossAttention, speaker_attention_map
from worker.engine.models.rope import apply_rope_3d

_HALF = (torch.bfloat16, torch.float16)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and returned in the input dtype (bf16 activations lose nothing here)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in _HALF:
            # The half-precision kernels already normalise in float32 and round once on output; this skips
            # two full float32 copies of the activations per call.
            weight = None if self.weight is None else self.weight.to(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def modulate(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`(h.float() * (1 + scale) + shift).to(h.dtype)` with float32 scale/shift; for half h one fused
    kernel computing in float32 and writing h's dtype, instead of three float32 intermediates."""
    if h.dtype in _HALF and not torch.compiler.is_compiling():
        # (Under torch.compile the plain expression below is fused into one kernel by Inductor anyway.)
        return torch.addcmul(shift, h, 1 + scale, out=torch.empty_like(h))
    return (h.float() * (1 + scale) + shift).to(h.dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`(x + y * gate).to(x.dtype)` with a float32 gate; fused for half x as in `modulate`."""
    if x.dtype in _HALF and y.dtype == x.dtype and not torch.compiler.is_compiling():
        return torch.addcmul(x, y, gate, out=torch.empty_like(x))
    return (x + y * gate).to(x.dtype)


class RMSNorm(nn.Module):
    """RMS norm over the full channel width (all heads at once, as the checkpoint's q/k norms are [dim])."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class Float32Sequential(nn.Sequential):
    """A Sequential that runs its Linear layers in float32: the timestep path must not be rounded to bf16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.float()
        for layer in self:
            if isinstance(layer, nn.Linear):
                bias = None if layer.bias is None else layer.bias.float()
                x = F.linear(x, layer.weight.float(), bias)
            else:
                x = layer(x)
        return x


def _norm_or_identity(enabled: bool, dim: int, eps: float) -> nn.Module:
    return RMSNorm(dim, eps=eps) if enabled else nn.Identity()


class SelfAttention(nn.Module):
    """Full 3D self-attention with RoPE; optionally also returns the speaker attention map of this layer."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = _norm_or_identity(qk_norm, dim, eps)
        self.norm_k = _norm_or_identity(qk_norm, dim, eps)

    def forward(
        self,
        x: torch.Tensor,
        rope_freqs: torch.Tensor,
        frame_tokens: int,
        token_masks: torch.Tensor | None = None,
        sp=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x `[B, L, C]` -> (output `[B, L, C]`, speaker map `[B, classes, L]` or None when no masks are given).

        `sp` (a `worker.engine.parallel.SequenceShard`): x holds this rank's tokens only; attention and the
        speaker map (of the whole sequence) then exchange data with the other ranks."""
        b, l, _ = x.shape
        n, d = self.num_heads, self.head_dim
        q = apply_rope_3d(self.norm_q(self.q(x)).view(b, l, n, d), rope_freqs)
        k = apply_rope_3d(self.norm_k(self.k(x)).view(b, l, n, d), rope_freqs)
        v = self.v(x).view(b, l, n, d)
        out = self.o((attention(q, k, v) if sp is None else sp.self_attention(q, k, v)).flatten(2))
        ref_map = None
        if token_masks is not None:
            with torch.no_grad():
                speaker_map = speaker_attention_map if sp is None else sp.speaker_map
                ref_map = speaker_map(q, k, frame_tokens, token_masks)
        return out, ref_map


class I2VCrossAttention(nn.Module):
    """Attention of visual tokens to the CLIP image tokens (first 257 context rows) and to the text tokens."""

    IMAGE_TOKENS = 257

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = _norm_or_identity(qk_norm, dim, eps)
        self.norm_k = _norm_or_identity(qk_norm, dim, eps)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = _norm_or_identity(qk_norm, dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        n, d = self.num_heads, self.head_dim
        ctx_img = context[:, : self.IMAGE_TOKENS]
        ctx_txt = context[:, self.IMAGE_TOKENS :]
        q = self.norm_q(self.q(x)).view(b, -1, n, d)
        k = self.norm_k(self.k(ctx_txt)).view(b, -1, n, d)
        v = self.v(ctx_txt).view(b, -1, n, d)
        k_img = self.norm_k_img(self.k_img(ctx_img)).view(b, -1, n, d)
        v_img = self.v_img(ctx_img).view(b, -1, n, d)
        # Zero-padded text rows are attended like real tokens: the checkpoint was trained that way.
        img_out = attention(q, k_img, v_img).flatten(2)
        txt_out = attention(q, k, v).flatten(2)
        return self.o(txt_out + img_out)


class DiTBlock(nn.Module):
    """One transformer block: adaLN self-attention, text/image cross-attention, audio cross-attention, adaLN FFN."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        *,
        qk_norm: bool,
        cross_attn_norm: bool,
        eps: float,
        audio_dim: int,
        norm_input_visual: bool,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = FP32LayerNorm(dim, eps)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = I2VCrossAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = FP32LayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.empty(1, 6, dim))
        self.audio_cross_attn = AudioCrossAttention(dim, audio_dim, num_heads)
        self.norm_x = FP32LayerNorm(dim, eps, elementwise_affine=True) if norm_input_visual else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        *,
        rope_freqs: torch.Tensor,
        grid: tuple[int, int, int],
        context: torch.Tensor,
        audio_tokens: torch.Tensor,
        token_masks: torch.Tensor | None,
        human_num: int,
        sp=None,
    ) -> torch.Tensor:
        """x `[B, L, C]`; e0 `[B, 6, C]` float32 timestep modulation; token_masks None skips the speaker map;
        `sp`: sequence-parallel shard (x holds this rank's tokens), None on one GPU."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e0).chunk(6, dim=1)
        frame_tokens = grid[1] * grid[2]

        h = modulate(self.norm1(x), scale1, shift1)
        y, ref_map = self.self_attn(h, rope_freqs, frame_tokens, token_masks, **({} if sp is None else {"sp": sp}))
        x = gated_residual(x, y, gate1)

        x = x + self.cross_attn(self.norm3(x), context)
        x = x + self.audio_cross_attn(
            self.norm_x(x), audio_tokens, grid, x_ref_attn_map=ref_map, human_num=human_num,
            **({} if sp is None else {"sp": sp}),
        )

        y = self.ffn(modulate(self.norm2(x), scale2, shift2))
        return gated_residual(x, y, gate2)


class Head(nn.Module):
    """Final adaLN and projection to patch pixels; computed in float32."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim
        self.patch_size = tuple(patch_size)
        self.norm = FP32LayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.empty(1, 2, dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x `[B, L, C]`, e `[B, C]` float32 time embedding -> `[B, L, prod(patch) * out_dim]` float32."""
        shift, scale = (self.modulation.float() + e.float().unsqueeze(1)).chunk(2, dim=1)
        h = self.norm(x) * (1 + scale) + shift
        bias = None if self.head.bias is None else self.head.bias.float()
        return F.linear(h.float(), self.head.weight.float(), bias)


class MLPProj(nn.Module):
    """CLIP image features (1280 wide) to model width; plain torch LayerNorms (eps 1e-5) as in the checkpoint."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, in_dim),
            nn.GELU(),
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(image_embeds)
