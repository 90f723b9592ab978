"""Repack the published DiT (fp32 shards + InfiniteTalk adapter, optionally LoRAs) into one bundle.

Why: the published base shards are float32 (about 65 GB); a worker computes in bf16 or fp8, so a
cold start that reads the original files reads two to four times the bytes it needs and converts
every tensor on the way. The bundle holds exactly what the engine loads, already merged and cast.

Bounded memory: safetensors' own writer wants every tensor in memory at once, so this module
writes the format itself. A first pass reads only the headers (shapes and dtypes) and lays out
the output header; the second pass reads one source tensor at a time with plain file reads (no
mmap, so source pages never count as resident), merges, casts and appends it. Peak resident
memory is a small multiple of the largest single tensor (about 280 MB of fp32 for the 14B
model's FFN weights), well under one shard.

Bundle format (one `.safetensors` file; `__metadata__` values are strings, as the format requires):
  format          "infinitetalk-bundle"       bundle_version "1"
  dtype           "bfloat16" | "float8_e4m3fn" (what the large block matrices are stored as)
  compute_dtype   "bfloat16"                   (every other floating tensor is stored in it)
  scale_suffix    ".scale"                     (fp8: `<key>.scale`, float32, one value per output row)
  fp8_max         "448.0"                      (largest finite e4m3fn value; row max maps onto it)
  sources, loras  JSON lists of {file, size} / {file, size, strength}
  dit_config      the model folder's config.json, verbatim
fp8 dequantisation is `q.float() * scale[:, None]`. The error this introduces per element is at
most half an e4m3 step: |w' - w| <= 2**-4 * |w| + 2**-10 * scale_row (see FP8_REL_ERR / FP8_ABS_STEPS).
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from worker.engine.formats.bundle import BUNDLE_FORMAT, SCALE_SUFFIX

if TYPE_CHECKING:  # torch is imported lazily: `worker.weights` must import without the engine extras
    import torch

BUNDLE_VERSION = "1"
FP8_MAX = 448.0
# Half a step of e4m3's 3-bit mantissa, relative to the value, for normal numbers...
FP8_REL_ERR = 2.0**-4
# ...and half the subnormal step (2**-9 in units of the row scale) for values near zero.
FP8_ABS_STEPS = 2.0**-10
BUNDLE_DTYPES = ("bfloat16", "float8_e4m3fn")

ST_DTYPES = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
_ST_CODE = {name: code for code, (name, _) in ST_DTYPES.items()}
_FLOAT_CODES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


class RepackError(Exception):
    """A source file or LoRA does not fit the model; the message names the file and key."""


# ---------------------------------------------------------------------------------------------
# safetensors, read and written without holding more than one tensor


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    key: str
    dtype: str  # safetensors code, e.g. "F32"
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Tensor entries and `__metadata__` of a safetensors file, from its header alone."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise RepackError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 * 2**20):
                raise RepackError(f"{path}: header length {n} does not fit the file ({size} bytes)")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise RepackError(f"{path}: unreadable safetensors header: {exc}") from exc
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    entries: dict[str, TensorEntry] = {}
    for key, info in header.items():
        begin, end = info["data_offsets"]
        if info["dtype"] not in ST_DTYPES:
            raise RepackError(f"{path}: key {key!r} has unsupported dtype {info['dtype']}")
        if base + end > size:
            raise RepackError(f"{path}: key {key!r} lies past the end of the file (truncated?)")
        entries[key] = TensorEntry(path, key, info["dtype"], tuple(info["shape"]), base + begin, end - begin)
    return entries, meta


def read_tensor(entry: TensorEntry, handle: BinaryIO | None = None) -> "torch.Tensor":
    """One tensor, read with a plain file read into memory this process owns (and frees)."""
    import torch

    buf = bytearray(entry.nbytes)
    own = handle is None
    f = open(entry.file, "rb") if own else handle
    try:
        f.seek(entry.offset)
        got = f.readinto(buf)
    finally:
        if own:
            f.close()
    if got != entry.nbytes:
        raise RepackError(f"{entry.file}: key {entry.key!r} is cut short (truncated file?)")
    dtype = getattr(torch, ST_DTYPES[entry.dtype][0])
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(entry.shape)


@dataclass
class OutTensor:
    """One tensor of a file `write_streamed` writes: its header entry and how to make its bytes when
    their turn comes (so a file larger than host RAM is written one tensor at a time)."""

    key: str
    code: str
    shape: tuple[int, ...]
    produce: Callable[[], "torch.Tensor"]

    @property
    def nbytes(self) -> int:
        n = ST_DTYPES[self.code][1]
        for d in self.shape:
            n *= d
        return n


def write_streamed(path: Path, tensors: Sequence[OutTensor], metadata: dict[str, str]) -> int:
    """Write a safetensors file whose tensors are produced one at a time; returns the file size.

    Written to `<path>.partial` and renamed at the end, so a crash never leaves a file that looks whole.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    pos = 0
    for t in tensors:
        header[t.key] = {"dtype": t.code, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        pos += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors:
            value = t.produce()
            if tuple(value.shape) != t.shape or _ST_CODE[str(value.dtype).removeprefix("torch.")] != t.code:
                raise RepackError(f"internal: {t.key} produced {value.dtype} {tuple(value.shape)}")
            value = value.contiguous()
            if value.numel():
                f.write(memoryview(value.view(-1).view(_byte_dtype()).numpy()))
            del value
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return path.stat().st_size


def _byte_dtype() -> "torch.dtype":
    import torch

    return torch.uint8


# ---------------------------------------------------------------------------------------------
# LoRA


_LORA_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "model.", "transformer.")
_LORA_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"))


@dataclass
class LoraSpec:
    path: Path
    strength: float = 1.0


@dataclass
class _LoraTerm:
    down: TensorEntry | None = None
    up: TensorEntry | None = None
    alpha: TensorEntry | None = None
    diff: TensorEntry | None = None
    strength: float = 1.0


@dataclass
class _LoraIndex:
    """target key -> terms to add, one per LoRA file that touches it."""

    terms: dict[str, list[_LoraTerm]] = field(default_factory=dict)


def _strip_prefix(key: str) -> str:
    for p in _LORA_PREFIXES:
        if key.startswith(p):
            return key[len(p) :]
    return key


def index_lora(spec: LoraSpec, targets: Iterable[str]) -> dict[str, _LoraTerm]:
    """Map every tensor of a LoRA file to the model key it changes; unknown keys are an error."""
    entries, _ = read_header(spec.path)
    targets = set(targets)
    by_module: dict[str, _LoraTerm] = {}
    for key, entry in entries.items():
        k = _strip_prefix(key)
        target: str | None = None
        slot = None
        for down_s, up_s in _LORA_PAIRS:
            if k.endswith(down_s):
                target, slot = k[: -len(down_s)] + ".weight", "down"
            elif k.endswith(up_s):
                target, slot = k[: -len(up_s)] + ".weight", "up"
        if slot is None:
            if k.endswith(".alpha"):
                target, slot = k[: -len(".alpha")] + ".weight", "alpha"
            elif k.endswith(".diff_b"):
                target, slot = k[: -len(".diff_b")] + ".bias", "diff"
            elif k.endswith(".diff"):
                target, slot = k[: -len(".diff")] + ".weight", "diff"
        if target is None or slot is None:
            raise RepackError(f"{spec.path}: key {key!r} is not a LoRA tensor this tool understands")
        if target not in targets:
            raise RepackError(f"{spec.path}: key {key!r} targets {target!r}, which the model does not have")
        term = by_module.setdefault(target, _LoraTerm(strength=spec.strength))
        setattr(term, slot, entry)
    for target, term in by_module.items():
        if (term.down is None) != (term.up is None):
            raise RepackError(f"{spec.path}: {target!r} has only one of the two LoRA matrices")
        if term.alpha is not None and term.down is None:
            raise RepackError(f"{spec.path}: {target!r} has an alpha but no LoRA matrices")
    return by_module


def _lora_delta(term: _LoraTerm, shape: tuple[int, ...]) -> "torch.Tensor":
    import torch

    delta = torch.zeros(shape, dtype=torch.float32)
    if term.down is not None and term.up is not None:
        down = read_tensor(term.down).float()
        up = read_tensor(term.up).float()
        rank = down.shape[0]
        scale = 1.0
        if term.alpha is not None:
            scale = float(read_tensor(term.alpha).float().reshape(-1)[0]) / rank
        prod = up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)
        if prod.numel() != delta.numel():
            raise RepackError(f"{term.down.file}: LoRA for {term.down.key!r} has shape {tuple(prod.shape)}, model {shape}")
        delta += prod.reshape(shape) * scale
    if term.diff is not None:
        diff = read_tensor(term.diff).float()
        if diff.numel() != delta.numel():
            raise RepackError(f"{term.diff.file}: {term.diff.key!r} has shape {tuple(diff.shape)}, model {shape}")
        delta += diff.reshape(shape)
    return delta * term.strength


# ---------------------------------------------------------------------------------------------
# fp8


def quantize_fp8_rows(w: "torch.Tensor", *, inplace: bool = False) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per-output-row symmetric e4m3fn: each row's largest magnitude maps onto FP8_MAX.

    `inplace` lets repack scale its own float32 buffer instead of allocating two more copies.
    """
    import torch

    w = w.float() if inplace and w.dtype == torch.float32 else w.float().clone()
    amax = torch.linalg.vector_norm(w, ord=float("inf"), dim=1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).to(torch.float32)
    w.div_(scale[:, None]).clamp_(-FP8_MAX, FP8_MAX)
    return w.to(torch.float8_e4m3fn), scale


def dequantize_fp8_rows(q: "torch.Tensor", scale: "torch.Tensor", dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    import torch

    out = q.to(torch.float32) * scale.to(device=q.device, dtype=torch.float32)[:, None]
    return out if dtype is None else out.to(dtype)


def is_fp8_target(key: str, shape: tuple[int, ...], code: str) -> bool:
    """The large matrices of the transformer blocks (nearly all the bytes); embeddings, norms,
    modulation tables and the head stay in the compute dtype, as they are small and sensitive."""
    return code in _FLOAT_CODES and len(shape) == 2 and key.startswith("blocks.") and key.endswith(".weight")


# ---------------------------------------------------------------------------------------------
# repack


@dataclass(frozen=True)
class RepackResult:
    path: Path
    size: int
    tensors: int
    quantized: int
    source_bytes: int


def repack(
    dit_files: Sequence[Path | str],
    out: Path | str,
    *,
    dtype: str = "bfloat16",
    loras: Sequence[LoraSpec] = (),
    config_file: Path | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> RepackResult:
    """Merge `dit_files` (later files win, as the engine merges them), add LoRA deltas in float32,
    cast (or quantise), and stream the result into one bundle at `out`."""
    import torch

    if dtype not in BUNDLE_DTYPES:
        raise RepackError(f"dtype must be one of {BUNDLE_DTYPES}, not {dtype!r}")
    files = [Path(f) for f in dit_files]
    winners: dict[str, TensorEntry] = {}
    for f in files:
        if not f.is_file():
            raise RepackError(f"{f}: file not found")
        entries, _ = read_header(f)
        for key, entry in entries.items():
            winners[key] = entry
    lora_terms: dict[str, list[_LoraTerm]] = {}
    for spec in loras:
        for target, term in index_lora(spec, winners).items():
            lora_terms.setdefault(target, []).append(term)

    compute = torch.bfloat16
    handles: dict[Path, BinaryIO] = {}
    last_quant: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the scale follows its matrix

    def produce(entry: TensorEntry, quant: bool, part: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            if quant and part == "s" and entry.key in last_quant:
                return last_quant.pop(entry.key)[1]
            last_quant.clear()
            h = handles.get(entry.file)
            if h is None:  # one open file at a time, in source order
                for old in handles.values():
                    old.close()
                handles.clear()
                h = handles[entry.file] = open(entry.file, "rb")
                if progress:
                    progress(f"reading {entry.file.name}")
            value = read_tensor(entry, h)
            if entry.dtype not in _FLOAT_CODES:
                return value
            terms = lora_terms.get(entry.key)
            if terms:
                value = value.float()
                for term in terms:
                    value = value + _lora_delta(term, entry.shape)
            if quant:
                q, scale = quantize_fp8_rows(value, inplace=True)
                del value
                last_quant[entry.key] = (q, scale)
                return q if part == "q" else scale
            return value.to(compute)

        return run

    # Group output by source file so each file is read front to back once.
    ordered = sorted(winners.values(), key=lambda e: (files.index(e.file), e.offset))
    plan: list[OutTensor] = []
    quantized = 0
    for entry in ordered:
        if entry.dtype not in _FLOAT_CODES:
            plan.append(OutTensor(entry.key, entry.dtype, entry.shape, produce(entry, False, "")))
        elif dtype == "float8_e4m3fn" and is_fp8_target(entry.key, entry.shape, entry.dtype):
            plan.append(OutTensor(entry.key, "F8_E4M3", entry.shape, produce(entry, True, "q")))
            plan.append(OutTensor(entry.key + SCALE_SUFFIX, "F32", (entry.shape[0],), produce(entry, True, "s")))
            quantized += 1
        else:
            plan.append(OutTensor(entry.key, "BF16", entry.shape, produce(entry, False, "")))

    config_text = ""
    if config_file is not None and Path(config_file).is_file():
        config_text = Path(config_file).read_text()
    metadata = {
        "format": BUNDLE_FORMAT,
        "bundle_version": BUNDLE_VERSION,
        "dtype": dtype,
        "compute_dtype": "bfloat16",
        "scale_suffix": SCALE_SUFFIX,
        "scale_layout": "per-output-row",
        "fp8_max": repr(FP8_MAX),
        "sources": json.dumps([{"file": f.name, "size": f.stat().st_size} for f in files]),
        "loras": json.dumps(
            [{"file": s.path.name, "size": s.path.stat().st_size, "strength": s.strength} for s in loras]
        ),
        "dit_config": config_text,
    }
    try:
        size = write_streamed(Path(out), plan, metadata)
    finally:
        for h in handles.values():
            h.close()
    return RepackResult(
        path=Path(out),
        size=size,
        tensors=len(winners),
        quantized=quantized,
        source_bytes=sum(f.stat().st_size for f in files),
    )
