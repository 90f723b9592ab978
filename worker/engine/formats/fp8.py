"""fp8 (e4m3fn) weights as files hold them: the per-output-row quantiser and the loaders.

Why fp8: the DiT's block matrices are 99% of its bytes; in fp8 the 14B model is about 14 GB instead of
28 GB in bf16, which fits a 24 GB card without streaming and halves cold-start reads. The layer that
computes with them is `worker.engine.kernels.fp8_linear.FP8Linear`; this module is the one home of the
row quantisation (the engine and `weights repack` both use `quantize_rows`) and of reading fp8 files.

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

from collections.abc import Iterable
from pathlib import Path

import torch
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


def load_fp8_state(module: nn.Module, files: Iterable[Path | str], device="cpu", dtype=None) -> nn.Module:
    """Fill a module whose block Linears are FP8Linear from our fp8 bundle or a quanto fp8 file, strictly.

    fp8 matrices stay fp8 on `device`; everything else is cast to `dtype` (None: the module's dtype).
    """
    device = torch.device(device)
    expected = dict(module.state_dict(keep_vars=True))
    # An fp8 layer is known by its state (`<m>.weight` in e4m3 beside `<m>.weight_scale`), not by its class:
    # the layer (kernels/fp8_linear.py) depends on this module's quantiser, so this one must not import it.
    fp8_modules = {k[: -len(".weight_scale")] for k in expected
                   if k.endswith(".weight_scale") and getattr(expected.get(k[: -len("_scale")]), "dtype", None) == FP8}
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
