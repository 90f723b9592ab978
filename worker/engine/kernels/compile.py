"""Regional torch.compile of the DiT (GPU tiers; `EngineOptions.compile`).

Only the transformer block is compiled, in place (`nn.Module.compile`), so state-dict keys, LoRA merging
(in-place `copy_` into the parameters) and block streaming see the same modules as before. All 40 blocks
run the same code with their parameters as graph inputs, so Dynamo traces and Inductor compiles one
block once per input shape (batch size x grid), which keeps the compile cost at tens of seconds instead
of a whole-model graph's minutes. What it buys is fusion of the element-wise chains around the matmuls
and the attention calls (adaLN modulate, gated residuals, RMS norms, RoPE): see bench/README.md.

Compilation is lazy: the first forward of each new shape pays it. Inductor has no complex kernels, so
the compiled model rotates with a real (cos, sin) RoPE table (`rope.real_rope_table`) instead of the
complex one the eager model uses; the arithmetic is the same.
"""
from __future__ import annotations

import torch

from worker.engine.models.rope import Rope3DCache, real_rope_table

_HALF = (torch.bfloat16, torch.float16)


class RealRope3DCache(Rope3DCache):
    """`Rope3DCache` handing out real (cos, sin) tables in the compute precision of the activations."""

    def __init__(self, head_dim: int, activation_dtype: torch.dtype, max_entries: int = 8) -> None:
        super().__init__(head_dim, max_entries)
        self.table_dtype = torch.float32 if activation_dtype in _HALF else torch.float64
        self._real: dict[tuple, torch.Tensor] = {}

    def get(self, grid: tuple[int, int, int], device: torch.device | str) -> torch.Tensor:
        device = torch.device(device)
        key = (tuple(int(v) for v in grid), device.type, device.index)
        table = self._real.get(key)
        if table is None:
            if len(self._real) >= self.max_entries:
                self._real.pop(next(iter(self._real)))
            table = real_rope_table(super().get(grid, device), self.table_dtype)
            super().clear()  # the complex table is not needed once the real one exists
            self._real[key] = table
        return table

    def clear(self) -> None:
        super().clear()
        self._real.clear()


def compile_dit(dit: torch.nn.Module, mode: str | None = None) -> torch.nn.Module:
    """Compile every block of an `InfiniteTalkDiT` in place (idempotent) and return the model.

    `mode` is torch.compile's (None: default; "max-autotune-no-cudagraphs" also tunes the matmuls, at a
    much longer compile). Shapes are static: each batch size / frame grid compiles once on first use.
    """
    if getattr(dit, "_blocks_compiled", None) is not None:
        return dit
    dtype = dit.patch_embedding.weight.dtype
    dit._rope = RealRope3DCache(dit.config.head_dim, dtype)
    # One graph per (batch, grid) shape and per block-kwargs variant (one/two speakers); the default
    # limit of 8 is enough for a deployment but a benchmark sweeping shapes would silently fall back.
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.7; older builds know the second
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 32))
    for block in dit.blocks:
        block.compile(dynamic=False, mode=mode)
    dit._blocks_compiled = mode or "default"
    return dit
