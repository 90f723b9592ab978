"""The one place where the engine computes softmax attention.

Every attention call of the DiT (self, text/image cross, audio cross) goes through `attention`, so a GPU
tier can swap the kernel (torch SDPA, flash-attn, SageAttention, xformers) with one setting and parity
tests only have to trust one function. Layout is batch-first, tokens, heads, channels (`[B, L, N, C]`),
the layout of flash-attn and xformers, so the fast backends need no transposes.

Semantics shared by all backends: scale `softmax_scale` or 1/sqrt(C); for batch b only keys
`0..k_lens[b]-1` are attended; `causal` lets query i see keys j <= i (square attention only);
the result has the dtype of q.

`fa3_fp8` runs the long self-attention in fp8 e4m3 (FlashAttention-3's fp8 forward, Hopper only), with
q/k/v quantised in torch beside this call (`fp8_attention.quantize`: K and V smoothed by their token mean,
per-head scales) so that a compiled block fuses the quantisation into the kernels producing q/k/v; short
(cross-)attention stays bf16. `fp8_reference` computes the same fp8 arithmetic in float32 on any device
(slow, O(Lq*Lk) memory): it lets CPU tests measure what fp8 attention does to a whole (tiny) DiT.
"""
from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from worker.engine.kernels import fp8_attention
from worker.engine.errors import EngineError

BACKENDS: tuple[str, ...] = ("sdpa", "flash_attn", "sageattention", "xformers", "fa3", "fa3_fp8", "fp8_reference")

# The pip package an operator must install for each optional backend (named in errors).
_PACKAGES = {
    "flash_attn": "flash-attn 3 (module flash_attn_interface), flash-attn-4 (module flash_attn.cute) or flash-attn 2",
    "sageattention": "sageattention",
    "xformers": "xformers",
    "fa3": "fa3-fwd (module fa3_fwd_interface; the `hopper` extra)",
    "fa3_fp8": "fa3-fwd (module fa3_fwd_interface; the `hopper` extra)",
}

_log = logging.getLogger(__name__)

_backend = "sdpa"


class AttentionBackendUnavailable(EngineError):
    """The configured attention backend cannot be used on this machine (its package is not importable)."""


def _import_first(*names: str):
    for name in names:
        try:
            return importlib.import_module(name)
        except (ImportError, OSError):  # OSError: a wheel whose CUDA libraries do not load here
            continue
    return None


def _flash_module():
    # flash-attn 3 (Hopper, compiled), then flash-attn 4 (CuTe DSL, JIT-compiled; Hopper and Blackwell), then 2.
    # FA4 installs `flash_attn` as a namespace package, so FA2 is only trusted if it has `flash_attn_func`.
    for name in ("flash_attn_interface", "flash_attn.cute", "flash_attn"):
        module = _import_first(name)
        if module is not None and hasattr(module, "flash_attn_func"):
            return module
    return None


def flash_module_name() -> str | None:
    """Which FlashAttention the `flash_attn` backend runs here (for benchmarks and logs)."""
    module = _flash_module()
    return None if module is None else module.__name__


def _module_for(name: str):
    if name == "flash_attn":
        return _flash_module()
    if name == "sageattention":
        return _import_first("sageattention")
    if name == "xformers":
        return _import_first("xformers.ops")
    if name in ("fa3", "fa3_fp8"):
        return _import_first("fa3_fwd_interface")
    return torch


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def backend_available(name: str) -> bool:
    """True when `name` can run here (its package imports)."""
    return _module_for(_check_name(name)) is not None


def _require(name: str):
    module = _module_for(name)
    if module is None:
        raise AttentionBackendUnavailable(
            f"attention backend {name!r} needs the package {_PACKAGES[name]}, which is not importable here; "
            f"install it or choose another backend (available: "
            f"{', '.join(b for b in BACKENDS if backend_available(b))})"
        )
    return module


# Modules of FlashAttention builds that beat cuDNN's SDPA kernels on Hopper and later (measured on an H100:
# FA4 696 TFLOP/s against cuDNN 589 at the 480p self-attention shape, bench/README.md section 8). FA2 is
# what SDPA's own flash backend already is, so "auto" never picks it.
_FAST_FLASH = ("flash_attn_interface", "flash_attn.cute")


def resolve_backend(name: str, device: torch.device | str | None = None, *, fp8: bool = False) -> str:
    """`auto` -> on a CUDA device of compute capability 9.x with `fa3-fwd` importable: `fa3_fp8` when the DiT
    runs fp8 (`fp8`: the tier's model variant is fp8), else `fa3`; otherwise (capability 9.0+) `flash_attn`
    with FA3 or FA4 importable; else `sdpa`. Any other name is checked and returned. Lets one GPU-tier
    setting serve images with and without the optional kernels."""
    if name != "auto":
        return _check_name(name)
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return "sdpa"
    capability = torch.cuda.get_device_capability(dev)
    if capability < (9, 0):
        return "sdpa"
    if capability[0] == 9 and _module_for("fa3") is not None:  # FA3's kernels are Hopper-only
        return "fa3_fp8" if fp8 else "fa3"
    module = _flash_module()
    if module is not None and module.__name__ in _FAST_FLASH:
        return "flash_attn"
    _log.info("attention auto: no FA3/FA4 importable on this Hopper+ GPU, using sdpa")
    return "sdpa"


def set_attention_backend(name: str, device: torch.device | str | None = None, *, fp8: bool = False) -> str:
    """Select the process-wide default backend (`auto`: see `resolve_backend`) and return it; fails at once
    (not mid-job) if a named backend's package is missing."""
    global _backend
    name = resolve_backend(name, device, fp8=fp8)
    if name not in ("sdpa", "fp8_reference"):
        _require(name)
    _backend = name
    return name


def get_attention_backend() -> str:
    return _backend


def _key_lengths(k_lens, batch: int, lk: int) -> list[int] | None:
    """Python lengths when some key is masked out, None when every key is attended.

    Only host-side lengths are inspected; lengths living on an accelerator are handled by the caller
    without a device sync (SDPA builds the mask on device).
    """
    if k_lens is None:
        return None
    if isinstance(k_lens, torch.Tensor):
        lens = [int(v) for v in k_lens.reshape(-1).tolist()]
    else:
        lens = [int(v) for v in k_lens]
    if len(lens) != batch:
        raise ValueError(f"k_lens has {len(lens)} entries for a batch of {batch}")
    if any(n < 0 for n in lens):
        raise ValueError(f"negative key length in {lens}")
    if all(n >= lk for n in lens):
        return None
    return [min(n, lk) for n in lens]


def _sdpa(q, k, v, k_lens, causal, scale):
    b, lq, _, _ = q.shape
    lk = k.shape[1]
    mask = None
    if k_lens is not None:
        if isinstance(k_lens, torch.Tensor) and k_lens.device.type != "cpu":
            lens = k_lens.reshape(-1).to(device=q.device)
            mask = torch.arange(lk, device=q.device)[None, :] < lens[:, None]
        else:
            lens = _key_lengths(k_lens, b, lk)
            if lens is not None:
                lens_t = torch.tensor(lens, device=q.device)
                mask = torch.arange(lk, device=q.device)[None, :] < lens_t[:, None]
    if mask is not None:
        mask = mask[:, None, None, :]  # [B, 1, 1, Lk]
        if causal:
            tri = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
            mask = mask & tri[None, None]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
        )
    else:
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=scale
        )
    return out.transpose(1, 2)


def _half(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float16, torch.bfloat16) else x.to(torch.bfloat16)


def _flash(q, k, v, causal, scale):
    module = _require("flash_attn")
    out = module.flash_attn_func(_half(q), _half(k), _half(v), softmax_scale=scale, causal=causal)
    if isinstance(out, tuple):  # some flash-attn 3 builds also return the log-sum-exp
        out = out[0]
    return out


def _sage(q, k, v, causal, scale):
    module = _require("sageattention")
    return module.sageattn(_half(q), _half(k), _half(v), tensor_layout="NHD", is_causal=causal, sm_scale=scale)


def _xformers(q, k, v, causal, scale):
    ops = _require("xformers")
    bias = ops.LowerTriangularMask() if causal else None
    return ops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)


def _fa3(q, k, v, causal, scale):
    module = _require("fa3")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return module._flash_attn_forward(_half(q), _half(k), _half(v), softmax_scale=scale, causal=causal)[0]


_KERNELS = {"flash_attn": _flash, "sageattention": _sage, "xformers": _xformers, "fa3": _fa3}


@torch.library.custom_op("infinitetalk::external_attention", mutates_args=())
def _external_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, causal: bool, scale: float | None
) -> torch.Tensor:
    """The third-party kernels as one opaque operator, so torch.compile keeps a compiled block in one graph
    instead of tracing into (and breaking on) the packages' Python wrappers and JIT launchers."""
    return _KERNELS[backend](q, k, v, causal, scale).contiguous()


@_external_attention.register_fake
def _(q, k, v, backend, causal, scale):
    return q.new_empty(q.shape[:3] + (v.shape[-1],), dtype=q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16)


@torch.library.custom_op("infinitetalk::fa3_fp8_attention", mutates_args=())
def _fa3_fp8_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: torch.Tensor, k_descale: torch.Tensor,
    v_descale: torch.Tensor, causal: bool, scale: float,
) -> torch.Tensor:
    """FA3's fp8 forward (e4m3 q/k/v, float32 descales [B, N]) as one opaque operator; bf16 out."""
    module = _require("fa3_fp8")
    return module._flash_attn_forward(
        q, k, v, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, softmax_scale=scale, causal=causal
    )[0]


@_fa3_fp8_attention.register_fake
def _(q, k, v, q_descale, k_descale, v_descale, causal, scale):
    return q.new_empty(q.shape[:3] + (v.shape[-1],), dtype=torch.bfloat16)


def _fp8(q, k, v, causal, scale, emulated: bool):
    """Quantise (traced: fused by Inductor into q/k/v's producers), run the fp8 kernel, add V's mean back."""
    if causal:
        raise ValueError("causal attention is not supported by the fp8 backends")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    quant = fp8_attention.quantize(q, k, v)
    if emulated:
        out = fp8_attention.emulate(quant, scale)
    else:
        out = _fa3_fp8_attention(quant.q, quant.k, quant.v, quant.q_descale, quant.k_descale, quant.v_descale,
                                 False, scale)
    return fp8_attention.finish(out, quant, q.dtype)


def _fp8_worthy(q, k) -> bool:
    """Self-attention (as many keys as queries) or long keys: where fp8 pays. Cross-attention to text,
    image or audio tokens (<= 512 keys) stays bf16."""
    return k.shape[1] >= min(q.shape[1], fp8_attention.MIN_FP8_TOKENS)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    k_lens: torch.Tensor | Sequence[int] | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Softmax attention: q `[B, Lq, N, C]`, k/v `[B, Lk, N, C]` -> `[B, Lq, N, C]` in q's dtype."""
    name = _check_name(backend or _backend)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects 4-D [B, L, N, C] tensors, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"incompatible attention shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError("causal attention is only defined here for Lq == Lk")
    out_dtype = q.dtype
    q = q.to(v.dtype)
    k = k.to(v.dtype)

    if name == "sdpa":
        return _sdpa(q, k, v, k_lens, causal, softmax_scale).to(out_dtype)
    if name in ("fa3_fp8", "fp8_reference"):
        if _fp8_worthy(q, k) and _key_lengths(k_lens, q.shape[0], k.shape[1]) is None and not causal:
            return _fp8(q, k, v, causal, softmax_scale, emulated=name == "fp8_reference").to(out_dtype)
        if name == "fp8_reference":  # short or masked attention: bf16 in production, so exact here
            return _sdpa(q, k, v, k_lens, causal, softmax_scale).to(out_dtype)
        name = "fa3"

    if not torch.compiler.is_compiling():
        _require(name)  # a clear error for a missing package, before entering the operator

    def kernel(q, k, v, causal, scale):
        return _external_attention(q, k, v, name, causal, scale)

    lens = _key_lengths(k_lens, q.shape[0], k.shape[1])
    if lens is None:
        out = kernel(q, k, v, causal, softmax_scale)
    else:
        # The fused kernels take dense batches; ragged key lengths are run one batch element at a time
        # (batches are small here: guidance passes), which keeps every backend exact.
        if causal:
            raise ValueError(f"causal attention with k_lens is only supported by the sdpa backend, not {name!r}")
        parts = []
        for i, n in enumerate(lens):
            if n == 0:
                raise ValueError(f"batch element {i} has no keys to attend (k_lens 0)")
            parts.append(kernel(q[i : i + 1], k[i : i + 1, :n], v[i : i + 1, :n], causal, softmax_scale))
        out = torch.cat(parts, dim=0)
    return out.to(out_dtype)
