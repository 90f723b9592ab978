"""Wan2.1 video VAE: causal 3D encoder/decoder and the latent scaling used by the DiT.

Video is processed in causal chunks with per-layer temporal caches (see `vae_layers`), never as
a whole sequence, so activation memory depends on the frame size, not on the clip length:
encoding takes frame 0 alone and then groups of four frames; decoding takes one latent frame at
a time and yields 1 (first latent frame) or 4 video frames per step. That is also what makes
`WanVAE.decode_iter` possible: frames can be handed to a video encoder while later latent frames
are still being decoded.

`WanVAEModel` holds the parameters under the names of the published `Wan2.1_VAE.pth`, and its
constructor does nothing beyond the default module construction, so it can be built on the meta
device and have the checkpoint assigned straight onto the target device and dtype.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.engine.models.vae_layers import (
    AttentionBlock,
    CausalConv3d,
    ChunkCache,
    Resample,
    ResidualBlock,
    RMSNorm,
    cached_conv,
    run_cached,
    run_head,
)

# Per-channel statistics of the Wan2.1 latent space, published with the checkpoint.
WAN21_LATENTS_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8


@dataclass(frozen=True)
class VAEConfig:
    """Shape of the VAE and its latent statistics; the defaults are the published Wan2.1 VAE."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self) -> None:
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError("temperal_downsample needs one entry per resolution change")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/latents_std need {self.z_dim} values")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VAEConfig:
        """Known keys only; notes and provenance fields in the file are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                continue
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> VAEConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


class Encoder3d(nn.Module):
    """Pixels [B, 3, t, H, W] -> [B, 2*z_dim, t', H/8, W/8] for one causal chunk."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        scale = 1.0
        last = len(cfg.dim_mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != last:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(out_dim, mode))
                scale /= 2.0
        self.downsamples = nn.Sequential(*blocks)
        top = dims[-1]
        self.middle = nn.Sequential(
            ResidualBlock(top, top, cfg.dropout), AttentionBlock(top), ResidualBlock(top, top, cfg.dropout)
        )
        self.head = nn.Sequential(RMSNorm(top, 3), nn.SiLU(), CausalConv3d(top, cfg.z_dim * 2, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        x = run_cached(self.downsamples, x, cache)
        x = run_cached(self.middle, x, cache)
        return run_head(self.head, x, cache)


class Decoder3d(nn.Module):
    """Latent [B, z_dim, 1, h, w] (one latent frame) -> pixels [B, 3, 1 or 4, 8h, 8w]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mults = (cfg.dim_mult[-1], *reversed(cfg.dim_mult))
        dims = [cfg.dim * m for m in mults]
        temporal_up = tuple(reversed(cfg.temperal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0], cfg.dropout),
            AttentionBlock(dims[0]),
            ResidualBlock(dims[0], dims[0], cfg.dropout),
        )
        blocks: list[nn.Module] = []
        scale = 1.0 / 2 ** (len(cfg.dim_mult) - 2)
        last = len(cfg.dim_mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the upsampling layer before this stage halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != last:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_up[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1], 3), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        x = run_cached(self.middle, x, cache)
        x = run_cached(self.upsamples, x, cache)
        return run_head(self.head, x, cache)


class WanVAEModel(nn.Module):
    """The parameter-holding network; state-dict keys equal those of `Wan2.1_VAE.pth`.

    `encode_mu` / `decode_raw` work on unscaled latents; the latent statistics live in `WanVAE`.
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        cfg = config or VAEConfig()
        self.config = cfg
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)

    @classmethod
    def on_meta(cls, config: VAEConfig | None = None) -> WanVAEModel:
        """Shape-only model for `load_state_dict(..., assign=True)` onto any device."""
        with torch.device("meta"):
            return cls(config)

    def encode_mu(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1+4k, H, W] -> posterior mean [B, z_dim, 1+k, H/8, W/8]."""
        frames = video.shape[2]
        if frames < 1 or (frames - 1) % TEMPORAL_STRIDE:
            raise ValueError(f"VAE encode needs 4k+1 frames, got {frames}")
        cache = ChunkCache()
        chunks = []
        for start, stop in _encode_chunks(frames):
            cache.next_chunk()
            chunks.append(self.encoder(video[:, :, start:stop], cache))
        moments = self.conv1(torch.cat(chunks, dim=2))
        return moments[:, : self.config.z_dim]

    def decode_raw_iter(self, z: torch.Tensor) -> Iterator[torch.Tensor]:
        """Unscaled latent [B, z_dim, T, h, w] -> pixel chunks of 1, then 4 frames (unclamped)."""
        x = self.conv2(z)
        cache = ChunkCache()
        for t in range(x.shape[2]):
            cache.next_chunk()
            yield self.decoder(x[:, :, t : t + 1], cache)


def _encode_chunks(frames: int) -> list[tuple[int, int]]:
    spans = [(0, 1)]
    spans += [(s, s + TEMPORAL_STRIDE) for s in range(1, frames, TEMPORAL_STRIDE)]
    return spans


class WanVAE:
    """Scaled-latent interface used by the pipeline.

    encode: video in [-1, 1] -> `(mu - mean) * (1 / std)`; decode: `z / (1 / std) + mean` -> video.
    The statistics are applied in float32 whatever the model dtype (e.g. bfloat16); results are
    returned as float32. On CUDA, float32 convolutions use TF32 unless
    `torch.backends.cudnn.allow_tf32` is off (a process-wide choice left to the caller): with it on,
    decoded pixels drift by about 1e-3 from a strict float32 run.
    """

    def __init__(self, model: WanVAEModel) -> None:
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32)
        self.inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        config: VAEConfig | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> WanVAE:
        """Build on meta and assign the checkpoint (strict) onto `device`/`dtype` without an init pass."""
        model = WanVAEModel.on_meta(config)
        converted = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
        model.load_state_dict(converted, strict=True, assign=True)
        return cls(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        return self.mean.to(device).view(shape), self.inv_std.to(device).view(shape)

    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1], F = 4k+1 -> scaled latent [B, z_dim, k+1, H/8, W/8] (float32)."""
        mu = self.model.encode_mu(video.to(device=self.device, dtype=self.dtype)).float()
        mean, inv_std = self._stats(mu.device)
        return (mu - mean) * inv_std

    @torch.inference_mode()
    def decode_iter(self, latent: torch.Tensor, *, clamp: bool = True) -> Iterator[torch.Tensor]:
        """Scaled latent [B, z_dim, T, h, w] -> float32 frame groups [B, 3, n, 8h, 8w], n = 1 then 4."""
        z = latent.to(device=self.device, dtype=torch.float32)
        mean, inv_std = self._stats(z.device)
        z = (z / inv_std + mean).to(self.dtype)
        for frames in self.model.decode_raw_iter(z):
            frames = frames.float()
            yield frames.clamp_(-1.0, 1.0) if clamp else frames

    def decode_unclamped(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw decoder output [B, 3, 4(T-1)+1, 8h, 8w]."""
        return torch.cat(list(self.decode_iter(latent, clamp=False)), dim=2)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, 4(T-1)+1, 8h, 8w] clamped to [-1, 1]."""
        return torch.cat(list(self.decode_iter(latent, clamp=True)), dim=2)
