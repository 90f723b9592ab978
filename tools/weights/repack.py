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

The bundle format (names, metadata, fp8 layout and error bound) is defined once in
`worker.engine.formats.bundle`; LoRA parsing and deltas and the fp8 row quantiser are the engine's own
(`worker.engine.formats.lora`, `worker.engine.formats.fp8`), so a bundle holds exactly what a merge at load gives.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from worker.engine.errors import WeightLoadError
from worker.engine.formats.bundle import BUNDLE_DTYPES, SCALE_SUFFIX, bundle_metadata

if TYPE_CHECKING:  # torch is imported lazily: `tools.weights` must import without the engine extras
    import torch

    from worker.engine.formats.lora import LoraTerm

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
# LoRA (parsed and applied by the engine's code, read through this module's plain file reads)


@dataclass
class LoraSpec:
    path: Path
    strength: float = 1.0


@dataclass
class _LoraUse:
    """One LoRA file's term for one target key, with the file's header entries to read it."""

    spec: LoraSpec
    entries: dict[str, TensorEntry]
    term: LoraTerm


def index_loras(loras: Sequence[LoraSpec], targets: Iterable[str]) -> dict[str, list[_LoraUse]]:
    """target key -> the LoRA terms that change it, one per file; unknown keys are an error."""
    from worker.engine.formats.lora import index_lora_keys

    targets = set(targets)
    out: dict[str, list[_LoraUse]] = {}
    for spec in loras:
        entries, _ = read_header(spec.path)
        try:
            index = index_lora_keys(spec.path, entries, targets)
        except WeightLoadError as exc:
            raise RepackError(f"{spec.path}: {exc.reason} (key {exc.key!r})") from exc
        for target, term in index.terms.items():
            out.setdefault(target, []).append(_LoraUse(spec, entries, term))
    return out


def _lora_delta(use: _LoraUse, shape: tuple[int, ...]) -> "torch.Tensor":
    from worker.engine.formats.lora import lora_delta

    try:
        delta = lora_delta(lambda key: read_tensor(use.entries[key]), use.term, shape, "cpu", use.spec.path)
    except WeightLoadError as exc:
        raise RepackError(f"{use.spec.path}: {exc.reason} (key {exc.key!r})") from exc
    return delta * use.spec.strength


# ---------------------------------------------------------------------------------------------
# fp8


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

    from worker.engine.formats.fp8 import quantize_rows

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
    lora_terms = index_loras(loras, winners)

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
                q, scale = quantize_rows(value, inplace=True)
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
    metadata = bundle_metadata(
        dtype,
        sources=[{"file": f.name, "size": f.stat().st_size} for f in files],
        loras=[{"file": s.path.name, "size": s.path.stat().st_size, "strength": s.strength} for s in loras],
        dit_config=config_text,
    )
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
