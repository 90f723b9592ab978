"""LoRA files merged into the DiT's weights: W += scale * (alpha / rank) * up @ down.

Why merge instead of running the low-rank branch beside each Linear: the distill LoRAs (lightx2v,
FusioniX) touch every projection of every block and are used for whole jobs, so folding them in
once costs nothing per forward, and the merged module is the plain DiT every other feature
(offload, fp8, TeaCache) already handles.

Key naming understood (facts from the published files and the loaders that read them):
  prefixes   `diffusion_model.` (ComfyUI/Kijai exports: lightx2v, FusioniX), `model.diffusion_model.`,
             `base_model.model.` (PEFT), `model.`, `transformer.`, none, or the underscored `lora_unet_blocks_0_self_attn_q`
             form (kohya, also seen half-underscored), matched against the model's own names with dots read as `_`;
  matrices   `<m>.lora_down.weight` / `<m>.lora_up.weight` or `<m>.lora_A.weight` / `<m>.lora_B.weight`
             (down/A is [rank, in], up/B is [out, rank]);
  alpha      optional `<m>.alpha` (a scalar); absent means alpha = rank, i.e. factor 1;
  full diffs `<m>.diff` (added to `<m>.weight`, e.g. the norm scales `cross_attn.norm_k_img.diff`)
             and `<m>.diff_b` (added to `<m>.bias`).
The module names after the prefix are the Wan checkpoint's (`blocks.0.self_attn.q`, `blocks.0.ffn.0`,
`img_emb.proj.1`, ...), which are ours too, so no renaming table is needed. Upstream InfiniteTalk's
own merger ignores `.alpha`; the published distill files carry alpha equal to their rank (or none),
where both rules agree.

Deltas are computed in float32 on the parameter's device and added to a float32 view of the
weight, then cast back, so a bf16 model is rounded once. Removing a merged LoRA subtracts the
same recomputed delta: exact up to float32 rounding on a float32 model, one extra bf16 rounding
per weight on a bf16 model (see `Engine.use_lora` for why that is acceptable there).
An fp8 Linear (kernels/fp8_linear.py) is dequantised, the delta added in float32 and the row requantised: each
merge or removal rounds its weights to e4m3 once more (half a step, 2**-4 relative, at most).

Every file is checked whole (keys, then each tensor's shape and dtype from the header, no data read:
`check_lora_fit`) before the first weight changes, so a bad file never leaves a half-merged model.
Per-job LoRAs (`merge_reversible` / `unmerge_reversible`) come off bit-exactly: while merging, the
elements whose subtraction would not round back to the old value (a bf16 weight rounds wherever
the sum leaves its binade or the delta dwarfs it) are kept aside with their old values and put
back after the subtraction, so a worker serving thousands of LoRA jobs never drifts. They are kept
in host memory, 6 bytes each (int32 position, old value); measured on bf16 weights of std 0.02, a
delta of 1% / 10% / 100% of that std leaves 1.3% / 7.7% / 33% of the elements to keep, so a
parameter past a third keeps its whole old copy instead (2 bytes an element, and its unmerge is a
copy). An fp8 Linear's bytes and row scales are copied to host memory (one byte a weight).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from worker.engine.errors import WeightLoadError
from worker.engine.formats.fp8 import quantize_rows
from worker.engine.kernels.fp8_linear import FP8Linear

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "model.", "transformer.")
KOHYA_PREFIX = "lora_unet_"
_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"))


@dataclass
class LoraTerm:
    """What one file says about one target parameter (file keys kept for error messages)."""

    down: str | None = None
    up: str | None = None
    alpha: str | None = None
    diff: str | None = None


@dataclass
class LoraIndex:
    """target parameter name -> term, plus the format the file was recognised as."""

    path: Path
    terms: dict[str, LoraTerm] = field(default_factory=dict)
    style: str = "plain"  # "diffusion_model" | "peft" | "kohya" | "plain"

    @property
    def n_low_rank(self) -> int:
        return sum(1 for t in self.terms.values() if t.down is not None)

    @property
    def n_diff(self) -> int:
        return sum(1 for t in self.terms.values() if t.diff is not None)


@dataclass(frozen=True)
class MergeReport:
    file: str
    scale: float
    style: str
    low_rank: int
    diffs: int


def _split(key: str) -> tuple[str, str] | None:
    """(module path, slot) for one file key, or None when the suffix is not a LoRA tensor."""
    for down, up in _PAIRS:
        if key.endswith(down):
            return key[: -len(down)], "down"
        if key.endswith(up):
            return key[: -len(up)], "up"
    for suffix, slot in ((".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff")):
        if key.endswith(suffix):
            return key[: -len(suffix)], slot
    return None


def _kohya_table(params: set[str]) -> dict[str, str]:
    """`blocks_0_self_attn_q` -> `blocks.0.self_attn.q` for every module path of the model."""
    modules = {p.rsplit(".", 1)[0] for p in params if "." in p}
    return {m.replace(".", "_"): m for m in modules}


def index_lora(path: Path | str, params: set[str]) -> LoraIndex:
    """Map every tensor of a LoRA file to the model parameter it changes (see `index_lora_keys`)."""
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(str(path), None, "LoRA file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightLoadError(str(path), None, f"corrupt LoRA file: {exc}") from exc
    return index_lora_keys(path, keys, params)


def index_lora_keys(path: Path | str, keys: Iterable[str], params: set[str]) -> LoraIndex:
    """The one LoRA key parser (the engine's merge and the weights tooling's repack both use it).

    Every key must be understood and must target a parameter of the model: a LoRA made for another
    model (Wan2.2, T2V, diffusers names) is refused with the first offending key instead of being
    half-applied.
    """
    path = Path(path)
    index = LoraIndex(path)
    kohya: dict[str, str] | None = None
    for key in keys:
        stripped = key
        for p in PREFIXES:
            if key.startswith(p):
                stripped = key[len(p) :]
                index.style = "peft" if p == "base_model.model." else "diffusion_model"
                break
        parsed = _split(stripped)
        if parsed is None:
            raise WeightLoadError(str(path), key, "not a LoRA tensor (expected lora_down/lora_up, lora_A/lora_B, "
                                                  "alpha, diff or diff_b)")
        module, slot = parsed
        if module.startswith(KOHYA_PREFIX):
            kohya = kohya if kohya is not None else _kohya_table(params)
            index.style = "kohya"
            module = kohya.get(module[len(KOHYA_PREFIX) :].replace(".", "_"), module)
        target = module + (".bias" if slot == "diff_b" else ".weight")
        if target not in params:
            raise WeightLoadError(str(path), key, f"targets {target!r}, which the DiT does not have "
                                                  "(a LoRA for another model?)")
        term = index.terms.setdefault(target, LoraTerm())
        setattr(term, "diff" if slot == "diff_b" else slot, key)
    for target, term in index.terms.items():
        if (term.down is None) != (term.up is None):
            raise WeightLoadError(str(path), term.down or term.up, f"{target!r} has only one of the two LoRA matrices")
        if term.alpha is not None and term.down is None:
            raise WeightLoadError(str(path), term.alpha, f"{target!r} has an alpha but no LoRA matrices")
    return index


_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def _numel(shape: Iterable[int]) -> int:
    return math.prod(int(d) for d in shape)


def _targets(module: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, FP8Linear]]:
    params = dict(module.named_parameters())
    fp8 = {f"{n}.weight": m for n, m in module.named_modules() if isinstance(m, FP8Linear)}
    return params, fp8


def check_term_shapes(
    shape_of: Callable[[str], tuple[int, ...]], dtype_of: Callable[[str], str], term: LoraTerm,
    shape: tuple[int, ...], path: Path | str,
) -> None:
    """Raise WeightLoadError naming the key when a term's tensors cannot make a change of `shape`
    (the rules `lora_delta` applies, decided from the header alone)."""
    path = str(path)
    for key in (term.down, term.up, term.alpha, term.diff):
        if key is not None and dtype_of(key) not in _FLOAT_DTYPES:
            raise WeightLoadError(path, key, f"dtype {dtype_of(key)} is not a float type")
    if term.down is not None and term.up is not None:
        down, up = shape_of(term.down), shape_of(term.up)
        if len(down) < 2 or len(up) < 2 or down[0] == 0:
            raise WeightLoadError(path, term.down if len(down) < 2 else term.up,
                                  f"LoRA matrices must be 2-D or more, got {tuple(down)} and {tuple(up)}")
        rank = down[0]
        if _numel(up[1:]) != rank:
            raise WeightLoadError(path, term.up, f"rank {_numel(up[1:])} does not match lora_down's {rank}")
        if up[0] != shape[0] or _numel(down[1:]) != _numel(shape[1:]):
            raise WeightLoadError(path, term.down, f"low-rank product {(up[0], _numel(down[1:]))} does not fit "
                                                   f"parameter shape {tuple(shape)}")
        if term.alpha is not None and _numel(shape_of(term.alpha)) != 1:
            raise WeightLoadError(path, term.alpha, f"alpha must be one number, got shape {tuple(shape_of(term.alpha))}")
    if term.diff is not None and _numel(shape_of(term.diff)) != _numel(shape):
        raise WeightLoadError(path, term.diff, f"shape {tuple(shape_of(term.diff))} does not fit {tuple(shape)}")


def check_lora_fit(module: nn.Module, path: Path | str) -> LoraIndex:
    """The file's index once every key targets a parameter of `module` and every tensor's shape and
    dtype fits it; reads the header only. Raises WeightLoadError naming the first key that does not fit."""
    path = Path(path)
    params, fp8 = _targets(module)
    index = index_lora(path, set(params) | set(fp8))
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            def shape_of(key: str) -> tuple[int, ...]:
                return tuple(handle.get_slice(key).get_shape())

            def dtype_of(key: str) -> str:
                return str(handle.get_slice(key).get_dtype())

            for target, term in index.terms.items():
                if target in fp8:
                    shape = tuple(fp8[target].weight.shape)
                else:
                    p = params[target]
                    if p.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
                        raise WeightLoadError(str(path), target, f"cannot merge into a {p.dtype} parameter "
                                                                 "(merge LoRAs before fp8 quantisation)")
                    shape = tuple(p.shape)
                check_term_shapes(shape_of, dtype_of, term, shape, path)
    except (SafetensorError, OSError) as exc:
        raise WeightLoadError(str(path), None, f"corrupt LoRA file: {exc}") from exc
    return index


def lora_delta(
    get: Callable[[str], torch.Tensor], term: LoraTerm, shape: tuple[int, ...] | torch.Size,
    device: torch.device | str, path: Path | str,
) -> torch.Tensor:
    """The float32 change one file's term makes to a parameter of `shape` (before the caller's scale):
    (alpha / rank) * up @ down, plus any full diff. `get(key)` reads a tensor of the LoRA file."""
    path = Path(path)
    delta = torch.zeros(shape, dtype=torch.float32, device=device)
    if term.down is not None and term.up is not None:
        down = get(term.down).to(device=device, dtype=torch.float32)
        up = get(term.up).to(device=device, dtype=torch.float32)
        rank = down.shape[0]
        factor = 1.0
        if term.alpha is not None:
            factor = float(get(term.alpha).float().reshape(-1)[0]) / rank
        up = up.reshape(up.shape[0], -1)
        if up.shape[1] != rank:
            raise WeightLoadError(str(path), term.up, f"rank {up.shape[1]} does not match lora_down's {rank}")
        prod = up @ down.reshape(rank, -1)
        if prod.numel() != delta.numel():
            raise WeightLoadError(str(path), term.down, f"low-rank product {tuple(prod.shape)} does not fit "
                                                        f"parameter shape {tuple(shape)}")
        delta += prod.reshape(shape) * factor
    if term.diff is not None:
        diff = get(term.diff).to(device=device, dtype=torch.float32)
        if diff.numel() != delta.numel():
            raise WeightLoadError(str(path), term.diff, f"shape {tuple(diff.shape)} does not fit {tuple(shape)}")
        delta += diff.reshape(shape)
    return delta


@torch.no_grad()
def merge_lora(module: nn.Module, path: Path | str, scale: float = 1.0) -> MergeReport:
    """Add `scale` times the LoRA of `path` to `module`'s parameters in place (negative scale removes it).

    Parameters may live on any device; each delta is built there one tensor at a time, so the extra
    memory is one float32 copy of the largest touched matrix.
    """
    path = Path(path)
    params, fp8 = _targets(module)
    index = check_lora_fit(module, path)  # the whole file fits before any weight changes
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for target, term in index.terms.items():
            if target in fp8:
                m = fp8[target]
                delta = lora_delta(handle.get_tensor, term, m.weight.shape, m.weight.device, path)
                q, row_scale = quantize_rows(m.dequantized(torch.float32) + delta * scale)
                m.weight.copy_(q)
                m.weight_scale.copy_(row_scale)
                del delta, q
                continue
            p = params[target]
            if p.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
                raise WeightLoadError(str(path), target, f"cannot merge into a {p.dtype} parameter "
                                                         "(merge LoRAs before fp8 quantisation)")
            delta = lora_delta(handle.get_tensor, term, p.shape, p.device, path)
            p.copy_((p.float() + delta * scale).to(p.dtype))
            del delta
    return MergeReport(str(path), float(scale), index.style, index.n_low_rank, index.n_diff)


_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16,
         torch.float64: torch.int64}


@dataclass
class ReversibleMerge:
    """What taking one merge back exactly needs, in host memory: per float parameter the flat positions
    (int32) and old values where subtracting the delta would not round back, or (position None) its whole
    old copy when that is smaller; per fp8 Linear its old bytes and row scales."""

    index: LoraIndex
    scale: float
    fixups: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = field(default_factory=dict)
    fp8_backup: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    merged: list[str] = field(default_factory=list)  # targets changed so far, in merge order

    @property
    def fixup_count(self) -> int:
        """Elements kept one by one (whole copies not counted)."""
        return sum(int(i.numel()) for i, _ in self.fixups.values() if i is not None)

    @property
    def whole_copies(self) -> int:
        return sum(1 for i, _ in self.fixups.values() if i is None)

    @property
    def host_bytes(self) -> int:
        kept = [t for pair in (*self.fixups.values(), *self.fp8_backup.values()) for t in pair if t is not None]
        return sum(t.numel() * t.element_size() for t in kept)


@torch.no_grad()
def merge_reversible(
    module: nn.Module, index: LoraIndex, get: Callable[[str], torch.Tensor], scale: float
) -> ReversibleMerge:
    """Add `scale` times the (already checked, `check_lora_fit`) LoRA to `module`, keeping what
    `unmerge_reversible` needs to restore every touched weight bit for bit. `get(key)` reads a tensor."""
    params, fp8 = _targets(module)
    record = ReversibleMerge(index, float(scale))
    try:
        for target, term in index.terms.items():
            if target in fp8:
                m = fp8[target]
                record.fp8_backup[target] = (m.weight.detach().to("cpu", copy=True),
                                             m.weight_scale.detach().to("cpu", copy=True))
                delta = lora_delta(get, term, m.weight.shape, m.weight.device, index.path)
                q, row_scale = quantize_rows(m.dequantized(torch.float32) + delta * scale)
                m.weight.copy_(q)
                m.weight_scale.copy_(row_scale)
                record.merged.append(target)
                continue
            p = params[target]
            delta = lora_delta(get, term, p.shape, p.device, index.path) * scale
            old = p.detach().clone()
            p.copy_((p.float() + delta).to(p.dtype))
            record.merged.append(target)
            back = (p.float() - delta).to(p.dtype)
            bits = _BITS[p.dtype]
            wrong = (back.view(bits) != old.view(bits)).reshape(-1).nonzero().reshape(-1)
            if wrong.numel() * 3 > old.numel() or old.numel() >= 2**31:  # 6 bytes a kept element, 2 a copied one
                record.fixups[target] = (None, old.to("cpu", copy=True))
            elif wrong.numel():
                record.fixups[target] = (wrong.to("cpu", torch.int32), old.reshape(-1)[wrong].to("cpu"))
            del delta, old, back, wrong
    except BaseException:
        unmerge_reversible(module, record, get)  # the part merged so far comes off again
        raise
    return record


@torch.no_grad()
def unmerge_reversible(module: nn.Module, record: ReversibleMerge, get: Callable[[str], torch.Tensor]) -> None:
    """Take `record`'s merge back: every weight it touched is again bit-identical to before it.
    Terms merged only partly (a merge that failed midway) are restored as far as they were merged."""
    params, fp8 = _targets(module)
    for target in reversed(record.merged):
        if target in fp8:
            q, row_scale = record.fp8_backup[target]
            fp8[target].weight.copy_(q)
            fp8[target].weight_scale.copy_(row_scale)
            continue
        p = params[target]
        where, old = record.fixups.get(target, (torch.empty(0, dtype=torch.int32), None))
        if where is None:  # the whole old copy
            p.copy_(old)
            continue
        delta = lora_delta(get, record.index.terms[target], p.shape, p.device, record.index.path) * record.scale
        p.copy_((p.float() - delta).to(p.dtype))
        del delta
        if old is not None:
            p.view(-1)[where.to(p.device, torch.long)] = old.to(p.device)
    record.merged.clear()


def resolve_lora_path(name: str | None, lora_dir: str | Path | None) -> Path | None:
    """A preset's `lora_file` is relative to the model's LoRA folder; absolute paths are kept."""
    if not name:
        return None
    p = Path(name)
    if p.is_absolute() or not lora_dir:
        return p
    return Path(lora_dir) / p

