"""A job's own LoRAs (job field `loras`): checked whole, merged on top of the preset's LoRA for the
job, and taken off bit-exactly when it ends, however it ends, without reloading the base weights.

Why merge (not a side branch per Linear): the same reasons as the preset's LoRA (formats/lora.py),
and every DiT feature (offload, fp8, TeaCache, compile) keeps working on the plain module. What a
merge costs is two passes over the touched weights per job (one delta each way, a few seconds at
full size), which `UserLoraStats` reports. Every file is checked against the model (keys, shapes,
dtypes from the header; then finite values) before the first weight changes, so a bad file is
refused with nothing to undo. Each file's tensors stay in host memory for the job (at most
MAX_LORAS files of the worker's LoRA size cap), so the unmerge does not read the volume again.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from worker.engine.errors import LoraFitError, WeightLoadError
from worker.engine.formats.lora import LoraIndex, ReversibleMerge, check_lora_fit, merge_reversible, unmerge_reversible


@dataclass
class UserLoraStats:
    """Seconds spent merging and unmerging (filled as they happen) and how many weights each file changed."""

    merge_s: float = 0.0
    unmerge_s: float = 0.0
    targets: list[int] = field(default_factory=list)


def check_user_loras(module: nn.Module, files: Sequence[str | Path]) -> list[LoraIndex]:
    """Every file's index once all of them fit `module`; reads headers only. Raises LoraFitError naming
    the job's `loras[i]` and the key."""
    out = []
    for i, path in enumerate(files):
        try:
            out.append(check_lora_fit(module, path))
        except WeightLoadError as exc:
            raise LoraFitError(i, str(path), exc.key, exc.reason) from exc
    return out


def _load_tensors(i: int, index: LoraIndex) -> dict[str, torch.Tensor]:
    keys = {k for t in index.terms.values() for k in (t.down, t.up, t.alpha, t.diff) if k is not None}
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(index.path), framework="pt", device="cpu") as handle:
            for key in sorted(keys):
                t = handle.get_tensor(key)
                if not bool(torch.isfinite(t).all()):
                    raise LoraFitError(i, str(index.path), key, "holds NaN or infinite values")
                out[key] = t
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise LoraFitError(i, str(index.path), None, f"cannot read the file: {exc}") from exc
    return out


@contextmanager
def user_loras(module: nn.Module, loras: Sequence[tuple[str, float]]) -> Iterator[UserLoraStats]:
    """Merge `loras` ((file, scale) pairs) into `module` for the `with` body, then restore every touched
    weight bit for bit (also when the body raises or is cancelled). A scale of 0 merges nothing."""
    stats = UserLoraStats()
    if not loras:
        yield stats
        return
    indexes = check_user_loras(module, [p for p, _ in loras])
    merged: list[tuple[ReversibleMerge, dict[str, torch.Tensor]]] = []
    try:
        start = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            for i, ((_, scale), index) in enumerate(zip(loras, indexes)):
                if scale == 0:
                    stats.targets.append(0)
                    continue
                tensors = _load_tensors(i, index)
                merged.append((merge_reversible(module, index, tensors.__getitem__, float(scale)), tensors))
                stats.targets.append(len(index.terms))
        stats.merge_s = round(time.perf_counter() - start, 3)
        yield stats
    finally:
        start = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            for record, tensors in reversed(merged):
                unmerge_reversible(module, record, tensors.__getitem__)
        stats.unmerge_s = round(time.perf_counter() - start, 3)
