"""fp8 (e4m3fn) linear layers: weights stored at one byte each, per-output-row float32 scales.

Compute: on Hopper/Ada GPUs (compute capability >= 8.9) `torch._scaled_mm` multiplies fp8 x fp8
directly, the activations quantised per row on the fly; everywhere else (CPU, older GPUs, or if
the fused call refuses the shapes) the weight is dequantised per forward, `q.float() * scale[:, None]`
cast to the activation dtype, and F.linear runs as usual. The fused path was written from the
documented `_scaled_mm` contract and has not been run on a GPU here. Weights are quantised and read by
`worker.engine.formats.fp8` (`quantize_rows`, `load_fp8_state`), which knows these layers by their state, not by this class.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.errors import WeightLoadError
from worker.engine.formats.bundle import FP8_MAX
from worker.engine.formats.fp8 import FP8, quantize_rows

# Hopper's fp8 tensor cores accumulate in a narrower format unless the kernel promotes partial sums to
# float32 every few k-steps; "fast accumulation" skips that promotion (~10% faster GEMMs, what inference stacks
# such as torchao use by default for the forward). Its error stays inside the fp8 accuracy bounds the bench
# and tests/engine/test_fp8.py guard (bench/README.md, fp8); False restores the promoted path.
FAST_ACCUM = True

# CUDA device index -> whether `torch._scaled_mm` runs fp8 there. Filled eagerly (`prime_fused`) when fp8
# weights land on a GPU, so a compiled forward only reads a constant instead of querying the driver.
_FUSED_CAPABLE: dict[int, bool] = {}


def prime_fused(device: torch.device | str) -> bool:
    """Whether `_scaled_mm` runs fp8 on `device` (False off CUDA), cached per CUDA device index."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    if index not in _FUSED_CAPABLE:
        _FUSED_CAPABLE[index] = hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(index) >= (8, 9)
    return _FUSED_CAPABLE[index]


def _fused_ok(x: torch.Tensor) -> bool:
    return x.is_cuda and x.shape[-1] % 16 == 0 and prime_fused(x.device)


class FP8Linear(nn.Module):
    """A Linear whose weight lives as fp8 + per-row scale; the bias stays in the compute dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, compute_dtype=torch.float32,
                 device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype, device=device)) if bias else None
        # True: `torch._scaled_mm` where it is fast (CUDA, capability 8.9+), else dequantise; False: always
        # dequantise; "always": `_scaled_mm` on any device torch supports it on (CPU too), which lets the CPU
        # tests run the GPU path's arithmetic (activation quantisation included).
        self.fused: bool | str = True

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "FP8Linear":
        dtype = linear.weight.dtype
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, compute_dtype=dtype,
                device=linear.weight.device)
        q, s = quantize_rows(linear.weight)
        m.weight.copy_(q)
        m.weight_scale.copy_(s)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.detach())
        prime_fused(m.weight.device)
        return m

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused == "always":
            return self._scaled_mm(x)
        if self.fused and _fused_ok(x):
            if torch.compiler.is_compiling():  # traced once per shape; a refusal surfaces at compile time
                return self._scaled_mm(x)
            try:
                return self._scaled_mm(x)
            except RuntimeError:  # shape/layout the fused kernel refuses: fall back for good
                self.fused = False
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def _scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        # Row-wise activation scales; under torch.compile these lines fuse into one reduction + one cast kernel.
        amax = x2.abs().amax(dim=1, keepdim=True).float()
        xs = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        xq = (x2.float() / xs).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        out = torch._scaled_mm(
            xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale[None, :].float(),
            bias=None if self.bias is None else self.bias.to(out_dtype), out_dtype=out_dtype,
            use_fast_accum=FAST_ACCUM and x.is_cuda,
        )
        return out.to(x.dtype).reshape(*lead, self.out_features)


def _blocks_only(name: str) -> bool:
    """The block matrices: what our repack stores in fp8 (embeddings, head, norms stay bf16)."""
    return name.startswith("blocks.")


def convert_linears(module: nn.Module, include: Callable[[str], bool] = _blocks_only) -> list[str]:
    """Replace every selected nn.Linear by an FP8Linear quantised from its weights; returns their names.
    On the meta device the replacements are empty shells, to be filled by `load_fp8_state`."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and include(n)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        lin = getattr(parent, child)
        if lin.weight.device.type == "meta":
            new = FP8Linear(lin.in_features, lin.out_features, lin.bias is not None,
                            compute_dtype=lin.weight.dtype, device="meta")
        else:
            new = FP8Linear.from_linear(lin)
        setattr(parent, child, new)
    return names


def convert_stored(module: nn.Module, stored: dict[str, str]) -> list[str]:
    """Make exactly the modules a file stores in fp8 FP8Linear shells (see `stored_fp8_modules`);
    a stored name that is not a Linear of `module` is a WeightLoadError naming the file and key."""
    linears = {n for n, m in module.named_modules() if isinstance(m, (nn.Linear, FP8Linear))}
    for name in sorted(stored):
        if name not in linears:
            raise WeightLoadError(stored[name], name + ".weight", "stored as fp8, but the model has no Linear there")
    return convert_linears(module, include=stored.__contains__)
