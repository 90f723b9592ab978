"""fp8 (e4m3fn) linear layers: weights stored at one byte each, per-output-row float32 scales.

Why: the DiT's block matrices are 99% of its bytes; in fp8 the 14B model is about 14 GB instead of
28 GB in bf16, which fits a 24 GB card without streaming and halves cold-start reads.

Compute: on Hopper/Ada GPUs (compute capability >= 8.9) `torch._scaled_mm` multiplies fp8 x fp8
directly, the activations quantised per row on the fly; everywhere else (CPU, older GPUs, or if
the fused call refuses the shapes) the weight is dequantised per forward, `q.float() * scale[:, None]`
cast to the activation dtype, and F.linear runs as usual. The fused path was written from the
documented `_scaled_mm` contract and has not been run on a GPU here.

Weight files read (`load_fp8_state`):
  ours     `weights repack --dtype float8_e4m3fn`: `<m>.weight` float8_e4m3fn + `<m>.weight.scale`
           float32 [out] (the bundle format, bundle.py; dequantisation `q.float() * scale[:, None]`);
  upstream InfiniteTalk's `quant_models/*_fp8.safetensors` are optimum-quanto `requantize` files
           (with a `*.json` quantisation map): a quantised Linear stores `<m>.weight._data`
           (float8) and `<m>.weight._scale` ([out, 1]) plus `<m>.input_scale` / `<m>.output_scale`,
           which are unused for weight-only quantisation. That is quanto's serialisation as
           publicly documented by the library; the real files were not inspected here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from worker.engine.errors import WeightLoadError
from worker.engine.formats.bundle import FP8_MAX, SCALE_SUFFIX

FP8 = torch.float8_e4m3fn
QUANTO_DATA, QUANTO_SCALE = "._data", "._scale"  # quanto: `<m>.weight._data`, `<m>.weight._scale`


def quantize_rows(w: torch.Tensor, *, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row e4m3fn: each row's largest magnitude maps onto FP8_MAX (448).

    The one quantiser of the engine and the weights tooling (bundles are written with it). `inplace`
    lets a caller that owns a float32 buffer have it scaled in place instead of allocating another copy.
    """
    wf = w.detach().float()
    amax = torch.linalg.vector_norm(wf, ord=float("inf"), dim=1)  # max |w| per row, without an |w| copy
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).to(torch.float32)
    if not (inplace and wf.data_ptr() == w.data_ptr()):
        wf = wf.clone()
    wf.div_(scale[:, None]).clamp_(-FP8_MAX, FP8_MAX)
    return wf.to(FP8), scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`q.float() * scale[:, None]`, optionally cast to `dtype`."""
    out = q.to(torch.float32) * scale.to(device=q.device, dtype=torch.float32)[:, None]
    return out if dtype is None else out.to(dtype)


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


def load_fp8_state(module: nn.Module, files: Iterable[Path | str], device="cpu", dtype=None) -> nn.Module:
    """Fill a module whose block Linears are FP8Linear from our fp8 bundle or a quanto fp8 file, strictly.

    fp8 matrices stay fp8 on `device`; everything else is cast to `dtype` (None: the module's dtype).
    """
    device = torch.device(device)
    expected = dict(module.state_dict(keep_vars=True))
    fp8_modules = {n for n, m in module.named_modules() if isinstance(m, FP8Linear)}
    loaded: dict[str, torch.Tensor] = {}
    for f in files:
        path = Path(f)
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightLoadError(str(path), None, f"unreadable fp8 file: {exc}") from exc
        from worker.engine.formats.prefetch import Prefetcher

        # Stream the file ahead of the tensor reads (prefetch.py): keys come in name order, not file order,
        # and without it the fp8 bundle loaded at 0.96 GB/s from a disk that reads 2.06 (bench/README.md s. 12).
        with handle, Prefetcher([path]):
            for key in handle.keys():
                target = _target(key, fp8_modules)
                if target is None:
                    continue  # quanto's activation scales
                if target not in expected:
                    raise WeightLoadError(str(path), key, "unexpected key")
                t = handle.get_tensor(key)
                want = expected[target]
                if target.endswith(".weight_scale"):
                    t = t.reshape(-1)
                if tuple(t.shape) != tuple(want.shape):
                    raise WeightLoadError(str(path), key, f"shape {tuple(t.shape)} does not match {tuple(want.shape)}")
                if want.dtype == FP8:
                    if t.dtype != FP8:
                        raise WeightLoadError(str(path), key, f"expected float8_e4m3fn, file has {t.dtype}")
                    loaded[target] = t.to(device)
                elif target.endswith(".weight_scale") or not want.is_floating_point():
                    loaded[target] = t.to(device=device, dtype=want.dtype)
                else:
                    loaded[target] = t.to(device=device, dtype=dtype or want.dtype)
    missing = [k for k in expected if k not in loaded]
    if missing:
        raise WeightLoadError(", ".join(str(f) for f in files), missing[0], f"missing key ({len(missing)} in all)")
    module.load_state_dict(loaded, strict=True, assign=True)
    prime_fused(device)
    return module


def stored_fp8_modules(files: Iterable[Path | str]) -> dict[str, str]:
    """Module name -> file, for every module whose weight the files store in fp8: ours (`<m>.weight`
    next to `<m>.weight.scale`) or quanto's (`<m>.weight._data`). Read from the headers only.

    Why from the files: which Linears upstream's quanto export quantised is recorded in the file
    (and its quantisation map), not known here, so the module is shaped after what it is given."""
    out: dict[str, str] = {}
    for f in files:
        path = Path(f)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                keys = set(handle.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightLoadError(str(path), None, f"unreadable fp8 file: {exc}") from exc
        for key in keys:
            if key.endswith(".weight" + QUANTO_DATA):
                out[key[: -len(".weight" + QUANTO_DATA)]] = str(path)
            elif key.endswith(".weight" + SCALE_SUFFIX) and key[: -len(SCALE_SUFFIX)] in keys:
                out[key[: -len(".weight" + SCALE_SUFFIX)]] = str(path)
    return out


def convert_stored(module: nn.Module, stored: dict[str, str]) -> list[str]:
    """Make exactly the modules a file stores in fp8 FP8Linear shells (see `stored_fp8_modules`);
    a stored name that is not a Linear of `module` is a WeightLoadError naming the file and key."""
    linears = {n for n, m in module.named_modules() if isinstance(m, (nn.Linear, FP8Linear))}
    for name in sorted(stored):
        if name not in linears:
            raise WeightLoadError(stored[name], name + ".weight", "stored as fp8, but the model has no Linear there")
    return convert_linears(module, include=stored.__contains__)


def _target(key: str, fp8_modules: set[str]) -> str | None:
    """File key -> module state-dict key (None: a key with no module counterpart, skipped)."""
    if key.endswith(".input_scale") or key.endswith(".output_scale"):
        return None
    for data_suffix, scale_suffix in ((".weight" + QUANTO_DATA, ".weight" + QUANTO_SCALE),
                                      (".weight", ".weight" + SCALE_SUFFIX)):
        if key.endswith(scale_suffix):
            return key[: -len(scale_suffix)] + ".weight_scale"
        if key.endswith(data_suffix) and key[: -len(data_suffix)] in fp8_modules:
            return key[: -len(data_suffix)] + ".weight"
    return key
