"""VAE decode and encode split across ranks by horizontal bands of rows, exact by halo exchange.

The Wan decoder is causal in time (each latent frame needs the cache of the previous one), so frame groups
cannot be decoded apart; in space, though, everything is local except the per-frame attention of the
middle block. Each rank therefore decodes a band of latent rows: before every 3x3 convolution it swaps
one edge row with each neighbour (its input and its temporal history alike), so the convolution sees the
rows a whole-frame run would see, and the extra output rows are cropped; the attention block gathers the
(low-resolution) frame from all bands. The result is the one-GPU decode up to float rounding of the
convolution kernels, at 1/world of the decoder's work per rank. The encoder is banded the same way (bands
are whole latent rows, so 8, 4 and 2 pixel rows at its three downsamplings: always even); its stride-2
convolutions pad only at the bottom, so a band needs just the next band's first row there.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from worker.engine.parallel.context import ParallelContext
from worker.engine.models.vae_layers import AttentionBlock, CausalConv3d, Resample


def band_sizes(rows: int, world: int) -> list[int]:
    """Rows per rank, as even as possible (the first `rows % world` ranks take one more)."""
    base, extra = divmod(rows, world)
    return [base + (r < extra) for r in range(world)]


class _Bands:
    """Halo exchange and band gathers for one decode."""

    def __init__(self, ctx: ParallelContext, latent_rows: int) -> None:
        self.ctx = ctx
        self.sizes = band_sizes(latent_rows, ctx.world)
        self.start = sum(self.sizes[: ctx.rank])
        self.has_top = ctx.rank > 0
        self.has_bottom = ctx.rank < ctx.world - 1

    def _peer(self, r: int) -> int:
        return r if self.ctx.group is None else dist.get_global_rank(self.ctx.group, r)

    def halo(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """x with the neighbours' adjacent rows attached along `dim` (none at the frame's own edges)."""
        rank, group = self.ctx.rank, self.ctx.group
        ops, top, bottom = [], None, None
        if self.has_top:
            top = torch.empty_like(x.narrow(dim, 0, 1)).contiguous()
            ops += [dist.P2POp(dist.isend, x.narrow(dim, 0, 1).contiguous(), self._peer(rank - 1), group=group),
                    dist.P2POp(dist.irecv, top, self._peer(rank - 1), group=group)]
        if self.has_bottom:
            bottom = torch.empty_like(x.narrow(dim, 0, 1)).contiguous()
            ops += [dist.P2POp(dist.isend, x.narrow(dim, x.shape[dim] - 1, 1).contiguous(), self._peer(rank + 1), group=group),
                    dist.P2POp(dist.irecv, bottom, self._peer(rank + 1), group=group)]
        for req in dist.batch_isend_irecv(ops) if ops else []:
            req.wait()
        return torch.cat([p for p in (top, x, bottom) if p is not None], dim=dim)

    def halo_below(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """x with the next band's first row appended (what a bottom-padded stride-2 convolution reads)."""
        rank, group = self.ctx.rank, self.ctx.group
        ops, bottom = [], None
        if self.has_top:
            ops.append(dist.P2POp(dist.isend, x.narrow(dim, 0, 1).contiguous(), self._peer(rank - 1), group=group))
        if self.has_bottom:
            bottom = torch.empty_like(x.narrow(dim, 0, 1)).contiguous()
            ops.append(dist.P2POp(dist.irecv, bottom, self._peer(rank + 1), group=group))
        for req in dist.batch_isend_irecv(ops) if ops else []:
            req.wait()
        return x if bottom is None else torch.cat([x, bottom], dim=dim)

    def crop(self, y: torch.Tensor, dim: int) -> torch.Tensor:
        lo = 1 if self.has_top else 0
        hi = y.shape[dim] - (1 if self.has_bottom else 0)
        return y.narrow(dim, lo, hi - lo)

    def gather_rows(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The whole frame from every rank's band along `dim` (bands may differ by a row)."""
        scale = x.shape[dim] // self.sizes[self.ctx.rank]
        sizes = [s * scale for s in self.sizes]
        pad = max(sizes) - x.shape[dim]
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat([x, x.new_zeros(shape)], dim=dim)
        parts = [torch.empty_like(x) for _ in range(self.ctx.world)]
        dist.all_gather(parts, x.contiguous(), group=self.ctx.group)
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)

    def band(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        scale = x.shape[dim] // sum(self.sizes)
        return x.narrow(dim, self.start * scale, self.sizes[self.ctx.rank] * scale)


def _spatial_kernel(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d | nn.Conv3d) and module.kernel_size[-2] == 3


@contextlib.contextmanager
def _banded(network: nn.Module, bands: _Bands):
    """Hooks that make `network` (the decoder or the encoder) compute on a band as if it saw the whole frame."""
    handles = []

    def conv3d_pre(module, args):
        x, *rest = args
        history = rest[0] if rest else None
        if history is None:
            return (bands.halo(x, 3), None)
        # one exchange for the chunk and its temporal history (both need the neighbours' rows)
        both = bands.halo(torch.cat([history.to(device=x.device, dtype=x.dtype), x], dim=2), 3)
        return (both[:, :, history.shape[2] :], both[:, :, : history.shape[2]])

    def conv2d_pre(module, args):
        return (bands.halo(args[0], 2),)

    def attn_pre(module, args):
        return (bands.gather_rows(args[0], 3), *args[1:])

    def down_pre(module, args):
        return (bands.halo_below(args[0], 2),)

    for module in network.modules():
        if isinstance(module, CausalConv3d) and _spatial_kernel(module):
            handles.append(module.register_forward_pre_hook(conv3d_pre))
            handles.append(module.register_forward_hook(lambda m, a, y: bands.crop(y, 3)))
        elif isinstance(module, Resample) and module.mode.startswith("downsample"):
            handles.append(module.resample.register_forward_pre_hook(down_pre))
        elif isinstance(module, Resample):
            for conv in module.resample:
                if _spatial_kernel(conv):
                    handles.append(conv.register_forward_pre_hook(conv2d_pre))
                    handles.append(conv.register_forward_hook(lambda m, a, y: bands.crop(y, 2)))
        elif isinstance(module, AttentionBlock):
            handles.append(module.register_forward_pre_hook(attn_pre))
            handles.append(module.register_forward_hook(lambda m, a, y: bands.band(y, 3)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class ParallelVAE:
    """A `WanVAE` whose decode is split over the ranks of `ctx` (rows), with the `WanVAE` interface the
    generation loop uses; every rank gets the whole decoded video. One rank: the plain decode."""

    def __init__(self, vae: Any, ctx: ParallelContext) -> None:
        self.vae = vae
        self.ctx = ctx

    def __getattr__(self, name: str) -> Any:  # encode, device, dtype, ...: the wrapped VAE's
        return getattr(self.vae, name)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        rows = video.shape[3] // 8
        if not self.ctx.is_parallel or rows < self.ctx.world or video.shape[3] % 8:
            return self.vae.encode(video)
        bands = _Bands(self.ctx, rows)
        with _banded(self.vae.model.encoder, bands):
            latent = self.vae.encode(bands.band(video, 3))
        return bands.gather_rows(latent, 3)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        rows = latent.shape[3]
        if not self.ctx.is_parallel or rows < self.ctx.world:
            return self.vae.decode(latent)
        bands = _Bands(self.ctx, rows)
        with _banded(self.vae.model.decoder, bands):
            video = self.vae.decode(bands.band(latent, 3))
        return bands.gather_rows(video, 3)
