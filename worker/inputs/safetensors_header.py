"""Read and check a safetensors file's header without torch: the sniff for LoRA refs.

Why parse it here: a LoRA a job sends must be safetensors (a pickled `.pt`/`.ckpt` can run code when
loaded, so it is never opened), and a truncated or garbage file should be refused at the download
stage with the field named, before the engine is loaded. The format is an 8-byte little-endian
header length, a JSON object {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}, then the tensor bytes; every offset must lie inside the file and match its shape and
dtype, so a file that passes cannot make the loader read past its end.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

#: Bytes per element of each safetensors dtype.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
#: Headers larger than this are refused (a LoRA over every projection of the 14B DiT has ~100 KB).
MAX_HEADER_BYTES = 64 * 1024 * 1024


class HeaderProblem(ValueError):
    """The file is not a well-formed safetensors file; the message says what is wrong in plain words."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: Path | str) -> dict[str, TensorEntry]:
    """Every tensor's entry, once the header is whole and consistent with the file's size."""
    path = Path(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderProblem("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise HeaderProblem("no safetensors header at the start (pickled .pt/.ckpt files are not accepted)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HeaderProblem("the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise HeaderProblem("the safetensors header is not a JSON object")
    body = size - 8 - n
    out: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise HeaderProblem("the header's __metadata__ must map names to strings")
            continue
        out[name] = _entry(name, entry, body)
    return out


def _entry(name: str, entry: object, body: int) -> TensorEntry:
    shown = name if len(name) <= 120 else name[:120] + "…"
    if not isinstance(entry, dict):
        raise HeaderProblem(f"tensor {shown!r} has no dtype/shape/data_offsets entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise HeaderProblem(f"tensor {shown!r} has an unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise HeaderProblem(f"tensor {shown!r} has a malformed shape")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise HeaderProblem(f"tensor {shown!r} has malformed data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= body:
        raise HeaderProblem(f"tensor {shown!r} lies outside the file (is it truncated?)")
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise HeaderProblem(f"tensor {shown!r}'s byte length does not match its shape and dtype")
    return TensorEntry(dtype, tuple(shape), begin, end)
