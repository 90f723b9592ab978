"""The bundle format, in one place: its names, its metadata, and loading it into a module.

A bundle is what `weights repack` (tools/weights/repack.py, the writer) makes of the published DiT: one
`.safetensors` file holding exactly what the engine loads, merged and cast. `__metadata__` values are strings:
  format          "infinitetalk-bundle"        bundle_version "1"
  dtype           "bfloat16" | "float8_e4m3fn" (what the large block matrices are stored as)
  compute_dtype   "bfloat16"                   (every other floating tensor is stored in it)
  scale_suffix    ".scale"                     (fp8: `<key>.scale`, float32, one value per output row)
  scale_layout    "per-output-row"
  fp8_max         "448.0"                      (largest finite e4m3fn value; each row's max maps onto it)
  sources, loras  JSON lists of {file, size} / {file, size, strength}
  dit_config      the model folder's config.json, verbatim
fp8 dequantisation is `q.float() * scale[:, None]` (fp8.py: `quantize_rows` / `dequantize_rows`). The error
this introduces per element is at most half an e4m3 step: |w' - w| <= 2**-4 * |w| + 2**-10 * scale_row
(FP8_REL_ERR / FP8_ABS_STEPS).

Loading is strict, like the engine's own loader: a missing, unexpected or mis-shaped key is a
`WeightLoadError` naming the bundle and the key. fp8 matrices are moved to the target device as fp8
(a quarter of the fp32 bytes over PCIe) and dequantised there. torch is imported inside the functions so
that importing this module has no side effects and needs no engine extras (the weights tooling imports
the names from here).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.engine.errors import WeightLoadError

if TYPE_CHECKING:
    import torch
    from torch import nn

BUNDLE_FORMAT = "infinitetalk-bundle"
BUNDLE_VERSION = "1"
BUNDLE_DTYPES = ("bfloat16", "float8_e4m3fn")
SCALE_SUFFIX = ".scale"  # fp8: `<key>.scale`, float32, one value per output row
FP8_MAX = 448.0  # largest finite float8_e4m3fn value
# Half a step of e4m3's 3-bit mantissa, relative to the value, for normal numbers...
FP8_REL_ERR = 2.0**-4
# ...and half the subnormal step (2**-9 in units of the row scale) for values near zero.
FP8_ABS_STEPS = 2.0**-10


def bundle_metadata(
    dtype: str,
    *,
    sources: Iterable[dict[str, Any]] = (),
    loras: Iterable[dict[str, Any]] = (),
    dit_config: str = "",
) -> dict[str, str]:
    """The `__metadata__` of a bundle whose large block matrices are stored as `dtype`."""
    if dtype not in BUNDLE_DTYPES:
        raise ValueError(f"dtype must be one of {BUNDLE_DTYPES}, not {dtype!r}")
    return {
        "format": BUNDLE_FORMAT,
        "bundle_version": BUNDLE_VERSION,
        "dtype": dtype,
        "compute_dtype": "bfloat16",
        "scale_suffix": SCALE_SUFFIX,
        "scale_layout": "per-output-row",
        "fp8_max": repr(FP8_MAX),
        "sources": json.dumps(list(sources)),
        "loras": json.dumps(list(loras)),
        "dit_config": dit_config,
    }


def read_bundle_metadata(path: Path | str) -> dict[str, Any]:
    """The bundle's metadata with JSON fields decoded; raises WeightLoadError for a non-bundle."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:  # the header alone; numpy keeps torch out
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightLoadError(str(path), None, f"not a readable safetensors file: {exc}") from exc
    if meta.get("format") != BUNDLE_FORMAT:
        raise WeightLoadError(str(path), None, f"not an {BUNDLE_FORMAT} file (format={meta.get('format')!r})")
    out: dict[str, Any] = dict(meta)
    for name in ("sources", "loras"):
        try:
            out[name] = json.loads(meta.get(name) or "[]")
        except ValueError:
            out[name] = []
    return out


def is_bundle(path: Path | str) -> bool:
    try:
        read_bundle_metadata(path)
    except (WeightLoadError, OSError):
        return False
    return True


def load_bundle_into(
    module: "nn.Module",
    path: Path | str,
    device: "torch.device | str" = "cpu",
    dtype: "torch.dtype | None" = None,
    *,
    keep_dtype=lambda key: False,
) -> "nn.Module":
    """Fill `module` (typically built on the meta device) from a bundle, strictly.

    `dtype` is the dtype floating tensors end up in (None: each module tensor's declared dtype);
    `keep_dtype(key)` keeps selected keys in their declared dtype, as `worker.engine.formats.loaders`.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    device = torch.device(device)
    read_bundle_metadata(path)
    expected = dict(module.state_dict(keep_vars=True))
    try:
        handle_cm = safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightLoadError(str(path), None, f"corrupt bundle: {exc}") from exc
    from worker.engine.formats.prefetch import Prefetcher

    loaded: dict[str, torch.Tensor] = {}
    with handle_cm as handle, Prefetcher([path]):  # stream the file ahead of the tensor reads
        keys = set(handle.keys())
        scales = {k for k in keys if k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] in keys}
        available = keys - scales
        missing = [k for k in expected if k not in available]
        if missing:
            raise WeightLoadError(str(path), missing[0], f"missing key ({len(missing)} missing in all)")
        unexpected = sorted(available - set(expected))
        if unexpected:
            raise WeightLoadError(str(path), unexpected[0], f"unexpected key ({len(unexpected)} unexpected in all)")
        for key, want in expected.items():
            try:
                tensor = handle.get_tensor(key)
                scale = handle.get_tensor(key + SCALE_SUFFIX) if key + SCALE_SUFFIX in scales else None
            except Exception as exc:  # a truncated bundle fails when the tensor is touched
                raise WeightLoadError(str(path), key, f"unreadable tensor: {exc}") from exc
            if tuple(tensor.shape) != tuple(want.shape):
                raise WeightLoadError(
                    str(path), key, f"shape {tuple(tensor.shape)} does not match expected {tuple(want.shape)}"
                )
            target = want.dtype if (dtype is None or not want.is_floating_point() or keep_dtype(key)) else dtype
            tensor = tensor.to(device)
            if scale is not None:
                tensor = tensor.to(torch.float32) * scale.to(device=device, dtype=torch.float32)[:, None]
            loaded[key] = tensor.to(dtype=target)
            del tensor
    module.load_state_dict(loaded, strict=True, assign=True)
    from worker.engine.formats.loaders import _materialise_leftovers  # noqa: PLC2701 - same package

    _materialise_leftovers(module, device)
    return module


def bundle_state_dict(path: Path | str, dtype: "torch.dtype | None" = None) -> "dict[str, torch.Tensor]":
    """Every tensor of a bundle on the CPU, fp8 matrices dequantised; for tests and small models."""
    import torch
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        keys = set(handle.keys())
        for key in sorted(keys):
            if key.endswith(SCALE_SUFFIX) and key[: -len(SCALE_SUFFIX)] in keys:
                continue
            t = handle.get_tensor(key)
            if key + SCALE_SUFFIX in keys:
                t = t.to(torch.float32) * handle.get_tensor(key + SCALE_SUFFIX).to(torch.float32)[:, None]
            out[key] = t if dtype is None or not t.is_floating_point() else t.to(dtype)
    return out
