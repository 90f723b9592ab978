"""InfiniteTalk DiT: the Wan2.1-I2V-14B transformer with InfiniteTalk's audio adapter.

State-dict names equal the published checkpoints (Wan2.1-I2V-14B-480P shards + InfiniteTalk's
`infinitetalk.safetensors`), so the merged dict loads with `strict=True`. The forward is batch-first:
several guidance passes with the same speaker count can share one call. Construction allocates
uninitialised parameters only, so `with torch.device("meta"): InfiniteTalkDiT(cfg)` is instant and a
loader can materialise weights straight on the target device.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.models.audio_adapter import AudioProjModel, split_audio_windows
from worker.engine.models.dit_blocks import DiTBlock, Float32Sequential, Head, MLPProj
from worker.engine.models.rope import Rope3DCache

CLIP_TOKENS = 257
CLIP_DIM = 1280


@dataclass(frozen=True)
class DiTConfig:
    """Constructor settings; defaults are the full-size Wan2.1-I2V-14B + InfiniteTalk values."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 36
    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 40
    num_layers: int = 40
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    audio_window: int = 5
    intermediate_dim: int = 512
    output_dim: int = 768
    context_tokens: int = 32
    vae_scale: int = 4
    norm_input_visual: bool = True
    norm_output_audio: bool = True
    # Widths fixed by the published encoders (CLIP ViT-H/14, chinese-wav2vec2-base); only the tiny
    # model changes them, so that its encoders can stay tiny too.
    clip_dim: int = 1280
    audio_layers: int = 12
    audio_dim: int = 768

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        object.__setattr__(self, "window_size", tuple(int(v) for v in self.window_size))
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size must have 3 entries, got {self.patch_size}")
        if self.window_size != (-1, -1):
            raise ValueError(f"only global attention (window_size (-1, -1)) is supported, got {self.window_size}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of even width")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiTConfig":
        """Accept a diffusers-style config.json dict: `_`-prefixed and unknown keys are ignored."""
        model_type = d.get("model_type", "i2v")
        if model_type != "i2v":
            raise ValueError(f"InfiniteTalk needs the i2v Wan model, config says model_type={model_type!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if not k.startswith("_") and k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> "DiTConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def full_size(cls) -> "DiTConfig":
        return cls()


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[cos, sin] embedding of raw timesteps (0..1000 scale) in float64, `[B, dim]`."""
    half = dim // 2
    pos = t.to(torch.float64)
    inv = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = torch.outer(pos, inv)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class InfiniteTalkDiT(nn.Module):
    """Wan2.1 I2V DiT + InfiniteTalk audio adapter, with the checkpoint's module names."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = Float32Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = Float32Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(
            DiTBlock(
                c.dim,
                c.ffn_dim,
                c.num_heads,
                qk_norm=c.qk_norm,
                cross_attn_norm=c.cross_attn_norm,
                eps=c.eps,
                audio_dim=c.output_dim,
                norm_input_visual=c.norm_input_visual,
            )
            for _ in range(c.num_layers)
        )
        self.head = Head(c.dim, c.out_dim, c.patch_size, c.eps)
        self.img_emb = MLPProj(c.clip_dim, c.dim)
        self.audio_proj = AudioProjModel(
            seq_len=c.audio_window,
            seq_len_vf=c.audio_window + c.vae_scale - 1,
            intermediate_dim=c.intermediate_dim,
            output_dim=c.output_dim,
            context_tokens=c.context_tokens,
            norm_output_audio=c.norm_output_audio,
            audio_layers=c.audio_layers,
            audio_dim=c.audio_dim,
        )
        # Not a buffer: kept out of the state dict and of `.to(dtype)`, built lazily on the compute device.
        self._rope = Rope3DCache(c.head_dim)
        # Optional `callable(blocks) -> iterable of blocks ready on the compute device`, set by
        # `worker.engine.kernels.offload.BlockStreamer` when blocks live in host memory; None: all resident.
        self.block_stream = None
        # Optional `worker.engine.parallel.ParallelContext` set by `attach_parallel`: each forward then splits
        # the latent tokens across its ranks; None (or one rank): the single-GPU path.
        self.parallel = None

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> "InfiniteTalkDiT":
        """Random weights for tests and benchmarks (never needed for inference): matrices and kernels
        N(0, 1/fan_in), norm scales 1 + 0.1 N(0, 1), biases 0.05 N(0, 1), modulation tables N(0, 1)/sqrt(dim).
        Drawn on the parameters' device (after `to_empty`), so `generator` must live there too."""
        for name, p in self.named_parameters():
            draw = torch.randn(p.shape, generator=generator, dtype=torch.float32, device=p.device)
            if name.endswith("modulation"):
                value = draw / math.sqrt(p.shape[-1])
            elif p.ndim >= 2:
                value = draw / math.sqrt(p[0].numel())
            elif name.endswith("weight"):
                value = 1 + 0.1 * draw
            else:
                value = 0.05 * draw
            p.copy_(value.to(p.dtype))
        return self

    # ------------------------------------------------------------------ forward

    def _token_masks(self, ref_target_masks: torch.Tensor, grid: tuple[int, int, int], dtype, device) -> torch.Tensor:
        masks = ref_target_masks.to(device=device, dtype=torch.float32)
        if masks.ndim == 4:  # one set per batch element is accepted but must be shared
            if not torch.equal(masks, masks[:1].expand_as(masks)):
                raise ValueError("ref_target_masks must be the same for every batch element")
            masks = masks[0]
        tokens = F.interpolate(masks[None], size=(grid[1], grid[2]), mode="nearest")[0]
        return (tokens > 0).reshape(tokens.shape[0], -1).to(dtype)

    def _audio_tokens(self, audio: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        b, humans = audio.shape[:2]
        cfg = self.config
        if audio.shape[-2:] != (cfg.audio_layers, cfg.audio_dim) or audio.shape[3] != cfg.audio_window:
            raise ValueError(
                f"audio must be [B, speakers, F, {cfg.audio_window}, {cfg.audio_layers}, {cfg.audio_dim}], "
                f"got {tuple(audio.shape)}"
            )
        first, later = split_audio_windows(
            audio.to(dtype).flatten(0, 1), self.config.vae_scale, self.config.audio_window
        )
        tokens = self.audio_proj(first, later)  # [B*speakers, T, ctx, out]
        t, ctx, width = tokens.shape[1:]
        # Speakers are concatenated along the token axis, speaker 0 first.
        tokens = tokens.reshape(b, humans, t, ctx, width).permute(0, 2, 1, 3, 4).reshape(b, t, humans * ctx, width)
        return tokens.to(dtype), humans

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """`[B, L, p*q*r*C]` -> `[B, C, f*p, h*q, w*r]`."""
        b = x.shape[0]
        f, h, w = grid
        p, q, r = self.config.patch_size
        c = self.config.out_dim
        x = x.reshape(b, f, h, w, p, q, r, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, c, f * p, h * q, w * r)

    def _run_blocks(self, x: torch.Tensor, e0: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        blocks = self.blocks if self.block_stream is None else self.block_stream(self.blocks)
        for block in blocks:
            x = block(x, e0, **kwargs)
        return x

    def forward(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor,
        y: torch.Tensor,
        audio: torch.Tensor,
        ref_target_masks: torch.Tensor | None = None,
        *,
        compute_ref_attn_map: bool | None = None,
        teacache: tuple[Any, Sequence[str]] | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity.

        latent `[B, 16, T, H, W]`; t `[B]` (raw 0..1000 timesteps); context `[B, L, text_dim]` with
        L <= text_len (zero-padded here); clip_fea `[B, 257, 1280]`; y `[B, 20, T, H, W]` (mask + VAE latent);
        audio `[B, speakers, 4*(T-1)+1, 5, 12, 768]`; ref_target_masks `[3, H, W]` (person 1, person 2,
        background) or None for one speaker. Returns `[B, 16, T, H, W]` float32.

        `teacache`: (a `worker.engine.sampling.teacache.TeaCache`, one guidance-branch name per batch element);
        the blocks are skipped, and each branch's cached residual reused, when the cache says so.

        `compute_ref_attn_map`: None computes the speaker map only for two speakers (for one speaker it
        cannot change the output); True forces it (tests), False is refused for two speakers.
        """
        cfg = self.config
        dtype = self.patch_embedding.weight.dtype
        device = self.patch_embedding.weight.device
        b = latent.shape[0]

        if context.shape[1] > cfg.text_len:
            raise ValueError(f"context has {context.shape[1]} tokens, the model takes at most {cfg.text_len}")
        if clip_fea.shape[-2:] != (CLIP_TOKENS, cfg.clip_dim):
            raise ValueError(f"clip_fea must be [B, {CLIP_TOKENS}, {cfg.clip_dim}], got {tuple(clip_fea.shape)}")

        # Patch embedding of noisy latent + (mask, VAE latent) condition.
        x = self.patch_embedding(torch.cat([latent, y], dim=1).to(device=device, dtype=dtype))
        grid = tuple(int(v) for v in x.shape[2:])
        # Contiguous [B, L, C]: a transposed view here would propagate its strides through every residual
        # add, and each layer norm would then copy it (measured: about 0.3 s of a 4.2 s H100 forward).
        x = x.flatten(2).transpose(1, 2).contiguous()

        # Timestep: float64 sinusoid, float32 MLP and modulation.
        t = t.to(device=device).reshape(-1)
        if t.numel() == 1 and b > 1:
            t = t.expand(b)
        e = self.time_embedding(sinusoidal_embedding(cfg.freq_dim, t).float())
        e0 = self.time_projection(e).unflatten(1, (6, cfg.dim))

        # Context: CLIP image tokens then text tokens padded with zero rows to text_len.
        ctx = context.to(device=device, dtype=dtype)
        if ctx.shape[1] < cfg.text_len:
            ctx = torch.cat([ctx, ctx.new_zeros(b, cfg.text_len - ctx.shape[1], ctx.shape[2])], dim=1)
        text = self.text_embedding(ctx)
        image = self.img_emb(clip_fea.to(device=device, dtype=dtype))
        context_tokens = torch.cat([image, text], dim=1).to(dtype)

        audio_tokens, humans = self._audio_tokens(audio.to(device), dtype)
        if audio_tokens.shape[1] != grid[0]:
            raise ValueError(f"audio covers {audio_tokens.shape[1]} latent frames, the latent has {grid[0]}")
        if humans > 2:
            raise ValueError(f"at most two speakers are supported, got {humans}")

        want_map = humans > 1 if compute_ref_attn_map is None else compute_ref_attn_map
        if humans > 1 and not want_map:
            raise ValueError("two speakers need the speaker attention map")
        token_masks = None
        if want_map:
            if ref_target_masks is None:
                raise ValueError("ref_target_masks [3, H, W] is required for two speakers")
            token_masks = self._token_masks(ref_target_masks, grid, dtype, device)

        rope_freqs = self._rope.get(grid, device)
        shard = None
        if self.parallel is not None and self.parallel.is_parallel:
            from worker.engine.parallel.sequence import shard_for

            shard = shard_for(self.parallel, x.shape[1], grid[1] * grid[2], cfg.num_heads)
            x, rope_freqs = shard.split(x), shard.split(rope_freqs, dim=0)
        block_kwargs = dict(
            rope_freqs=rope_freqs,
            grid=grid,
            context=context_tokens,
            audio_tokens=audio_tokens,
            token_masks=token_masks,
            human_num=humans,
        )
        if shard is not None:
            block_kwargs["sp"] = shard
        if teacache is None:
            x = self._run_blocks(x, e0, block_kwargs)
        else:
            cache, branches = teacache
            compute = [cache.wants_compute(br, e0[k]) for k, br in enumerate(branches)]
            if any(compute):  # a batch runs whole: a branch that could skip is computed with the others
                start = x
                x = self._run_blocks(x, e0, block_kwargs)
                for k, br in enumerate(branches):
                    cache.store(br, x[k] - start[k])
            else:
                x = x + torch.stack([cache.reuse(br) for br in branches]).to(x.dtype)

        out = self.head(x, e)
        if shard is not None:  # the only gather of the forward: every rank gets the whole prediction
            out = shard.gather(out)
        return self.unpatchify(out, grid).float()
