"""Building blocks of the Wan2.1 video VAE.

The VAE is causal in time and is run chunk by chunk (one frame, then groups of four frames when
encoding; one latent frame at a time when decoding). Every temporal convolution therefore needs
the last input frames of the previous chunk; `ChunkCache` carries them. Slots are addressed by
the order in which the cached call sites run within one chunk, which is identical for every
chunk, so no module needs to know its own slot number.

Parameter names mirror the published `Wan2.1_VAE.pth` (e.g. `residual.2.weight`,
`resample.1.weight`, `norm.gamma`), which is why some `nn.Sequential` containers hold
parameter-free placeholders: they keep the indices of the checkpoint's keys.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HISTORY_FRAMES = 2
"""A kernel-3 causal convolution needs the two frames before the chunk."""


class _ZeroHistory:
    """Marks an upsampling layer that has seen its first chunk, whose past counts as zero frames."""

    def __repr__(self) -> str:
        return "ZERO_HISTORY"


ZERO_HISTORY = _ZeroHistory()


class ChunkCache:
    """Temporal state of every cached call site, for one encode or decode pass.

    Call `next_chunk()` before running the network on a new chunk; then each call site
    `read()`s its previous state and `write()`s the new one, in network order.
    """

    def __init__(self) -> None:
        self._slots: list[Any] = []
        self._cursor = 0

    def next_chunk(self) -> None:
        self._cursor = 0

    def read(self) -> Any:
        return self._slots[self._cursor] if self._cursor < len(self._slots) else None

    def write(self, value: Any) -> None:
        if self._cursor < len(self._slots):
            self._slots[self._cursor] = value
        else:
            self._slots.append(value)
        self._cursor += 1

    def __len__(self) -> int:
        return len(self._slots)


class CausalConv3d(nn.Conv3d):
    """3D convolution that only looks back in time.

    The temporal padding of a symmetric `padding=p` is moved entirely to the past (2p frames);
    when history frames from the previous chunk are given they replace that many zero frames.
    Spatial padding stays symmetric and is done by the convolution itself.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(0, ph, pw))
        self.time_pad = 2 * pt

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        pad = self.time_pad
        if pad > 0:
            parts = []
            if history is not None:
                history = history.to(device=x.device, dtype=x.dtype)
                pad -= history.shape[2]
            if pad > 0:
                b, c, _, h, w = x.shape
                parts.append(x.new_zeros(b, c, pad, h, w))
            if history is not None:
                parts.append(history)
            x = torch.cat([*parts, x], dim=2)
        return super().forward(x)


def cached_conv(conv: CausalConv3d, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
    """Run `conv` on a chunk with the history of earlier chunks, and remember this chunk's tail.

    The kept tail is the chunk's last two frames; a one-frame chunk borrows the newest frame of
    the previous tail so that the next chunk still sees two frames of history.
    """
    prev = cache.read()
    tail = x[:, :, -HISTORY_FRAMES:].clone()
    if tail.shape[2] < HISTORY_FRAMES and prev is not None:
        tail = torch.cat([prev[:, :, -1:].to(tail.device), tail], dim=2)
    out = conv(x, prev)
    cache.write(tail)
    return out


class RMSNorm(nn.Module):
    """L2 normalisation over channels (dim 1), rescaled by sqrt(C) and a learned per-channel gain."""

    def __init__(self, dim: int, spatial_dims: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class NearestUpsample2x(nn.Module):
    """Doubles height and width by pixel repetition (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame of a [B, C, T, H, W] tensor."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class Resample(nn.Module):
    """Spatial (and optionally temporal) down- or upsampling between resolution stages.

    Modes: `downsample2d`, `downsample3d`, `upsample2d`, `upsample3d`. Upsampling halves the
    channel count. Temporal behaviour under chunking:
    - `downsample3d`: the first chunk passes through unchanged in time; later chunks are prefixed
      with the previous chunk's last frame and convolved with stride 2 in time.
    - `upsample3d`: the first chunk is not upsampled in time (one frame stays one frame); later
      chunks go through a time convolution producing two frames per input frame, interleaved.
    """

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, dim: int, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown resample mode {mode!r}")
        super().__init__()
        self.dim = dim
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._upsample_time(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, cache)
        return x

    def _upsample_time(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        prev = cache.read()
        if prev is None:
            cache.write(ZERO_HISTORY)
            return x
        tail = x[:, :, -HISTORY_FRAMES:].clone()
        if tail.shape[2] < HISTORY_FRAMES:
            older = torch.zeros_like(tail) if prev is ZERO_HISTORY else prev[:, :, -1:].to(tail.device)
            tail = torch.cat([older, tail], dim=2)
        y = self.time_conv(x, None if prev is ZERO_HISTORY else prev)
        cache.write(tail)
        b, c2, t, h, w = y.shape
        c = c2 // 2
        # channels [0, c) are the earlier frame of each pair, [c, 2c) the later one
        return y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _downsample_time(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        prev = cache.read()
        tail = x[:, :, -1:].clone()
        if prev is not None:
            x = self.time_conv(torch.cat([prev[:, :, -1:].to(x.device), x], dim=2))
        cache.write(tail)
        return x


class ResidualBlock(nn.Module):
    """norm-SiLU-conv-norm-SiLU-dropout-conv with a 1x1x1 projection shortcut when widths differ."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.residual = nn.Sequential(
            RMSNorm(in_dim, 3),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, 3),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        skip = self.shortcut(x)
        for layer in self.residual:
            x = cached_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + skip


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (no temporal state)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: ChunkCache | None = None) -> torch.Tensor:
        return x + _per_frame(self._attend, x)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 1, c * 3, h * w).permute(0, 1, 3, 2)
        q, k, v = qkv.contiguous().chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.squeeze(1).permute(0, 2, 1).reshape(n, c, h, w)
        return self.proj(y)


def run_cached(layers: nn.Sequential, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
    """Run a stack whose members all take `(x, cache)`."""
    for layer in layers:
        x = layer(x, cache)
    return x


def run_head(head: nn.Sequential, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
    """Run a norm-SiLU-conv head, caching the convolution's input."""
    for layer in head:
        x = cached_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x
