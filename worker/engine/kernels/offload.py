"""Low-VRAM placement: encoders parked in host memory between uses, DiT blocks streamed per forward.

Why: on a 24 GB card the bf16 14B DiT (about 28 GB) does not fit, and on 48 GB the encoders
(umT5-XXL about 11 GB, CLIP about 1.3 GB) would crowd out activations. The encoders run once per
job or chunk, so moving them over PCIe costs little; the DiT runs every step, so only the blocks
that do not fit are streamed and each copy overlaps the previous block's compute.

Every path here also runs with device=cpu, where "moving" copies host to host: the code that
streams on a GPU is the code the CPU tests check against the resident model.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

HOST = torch.device("cpu")


@contextmanager
def resident(module: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """Hold `module` on `device` for the block, then park it in host memory again (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to(HOST)


class OffloadedVAE:
    """The VAE wrapper with its weights in host memory except while it encodes or decodes."""

    def __init__(self, vae: Any, device: torch.device | str) -> None:
        self.vae = vae
        self.device = torch.device(device)
        vae.model.to(HOST)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        with resident(self.vae.model, self.device):
            return self.vae.encode(video)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        with resident(self.vae.model, self.device):
            return self.vae.decode(latent)

    def decode_iter(self, latent: torch.Tensor, **kw: Any) -> Iterator[torch.Tensor]:
        with resident(self.vae.model, self.device):
            yield from self.vae.decode_iter(latent, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.vae, name)


class BlockStreamer:
    """Keeps the last `n` DiT blocks in (pinned) host memory and copies each to the device just
    before its forward, the next one's copy queued on a side stream while the current one computes.

    Blocks run through `torch.func.functional_call` with the copied tensors, so the module's own
    parameters never leave host memory and nothing has to be swapped back. At most two streamed
    blocks occupy the device at a time. Installed as `dit.block_stream`.
    """

    def __init__(self, blocks: Sequence[nn.Module], n: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        count = len(blocks)
        self.streamed = set(range(count - min(max(int(n), 0), count), count))
        self.copies = 0
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._host: dict[int, dict[str, torch.Tensor]] = {}
        for i, block in enumerate(blocks):
            if i not in self.streamed:
                block.to(self.device)
                continue
            block.to(HOST)
            tensors = {}
            for name, t in [*block.named_parameters(), *block.named_buffers()]:
                if pin:
                    t.data = t.data.pin_memory()
                tensors[name] = t
            self._host[i] = tensors
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @classmethod
    def attach(cls, dit: nn.Module, n: int, device: torch.device | str) -> "BlockStreamer":
        """Place everything but the streamed blocks on `device` and hook the streamer into `dit`."""
        device = torch.device(device)
        for name, child in dit.named_children():
            if name != "blocks":
                child.to(device)
        for name, p in dit.named_parameters(recurse=False):
            p.data = p.data.to(device)
        streamer = cls(dit.blocks, n, device)
        dit.block_stream = streamer
        return streamer

    # ------------------------------------------------------------------ copies

    def _fetch(self, i: int) -> tuple[dict[str, torch.Tensor], Any]:
        host = self._host[i]
        self.copies += 1
        if self._stream is None:  # CPU: a real copy, so the streamed path never aliases the module
            return {k: v.detach().clone() for k, v in host.items()}, None
        with torch.cuda.stream(self._stream):
            out = {k: v.detach().to(self.device, non_blocking=True) for k, v in host.items()}
            event = torch.cuda.Event()
            event.record(self._stream)
        return out, event

    def _call(self, block: nn.Module, fetched: tuple[dict[str, torch.Tensor], Any]) -> Callable[..., torch.Tensor]:
        tensors, event = fetched

        def run(*args: Any, **kwargs: Any) -> torch.Tensor:
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                for t in tensors.values():
                    t.record_stream(current)  # allocated on the side stream, used on this one
            return functional_call(block, tensors, args, kwargs)

        return run

    def __call__(self, blocks: Sequence[nn.Module]) -> Iterator[Callable[..., torch.Tensor]]:
        pending: dict[int, tuple[dict[str, torch.Tensor], Any]] = {}
        if 0 in self.streamed:
            pending[0] = self._fetch(0)
        for i, block in enumerate(blocks):
            if i + 1 in self.streamed:
                pending[i + 1] = self._fetch(i + 1)  # queued before block i runs: overlaps its compute
            yield self._call(block, pending.pop(i)) if i in self.streamed else block
