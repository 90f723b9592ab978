"""Checkpoint readers that place weights straight onto the target device and dtype.

Modules are built on the meta device, then every tensor is read lazily from its file
(safetensors memory-mapped, `.pth` through `torch.load(mmap=True, weights_only=True)`),
checked against the module's expected shape, converted one tensor at a time and assigned.
The host therefore never holds a full float32 copy of a 14B model: at most one tensor is
converted at a time, and the source bytes stay in the page cache.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from worker.engine.errors import WeightLoadError
from worker.engine.formats.prefetch import Prefetcher

KeyMap = Callable[[str], str | None]
"""Maps a file's key to the module's key; None drops the key on purpose (e.g. CLIP's text tower)."""


@dataclass(frozen=True)
class TensorSource:
    """Where one tensor lives: enough to name the file and key in an error."""

    file: Path
    key: str


class CheckpointReader:
    """Lazy, uniform access to the tensors of several checkpoint files (later files override earlier ones)."""

    def __init__(self, files: Iterable[Path | str], key_map: KeyMap | None = None) -> None:
        self._stack = ExitStack()
        self._index: dict[str, tuple[TensorSource, Callable[[], torch.Tensor]]] = {}
        self._key_map = key_map or (lambda k: k)
        files = [Path(f) for f in files]
        try:
            for f in files:
                self._add(f)
            # Opening only read headers; stream the files' bytes ahead of the tensor reads (prefetch.py).
            self._stack.enter_context(Prefetcher([f for f in files if f.is_file()]))
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._index.clear()

    def keys(self) -> list[str]:
        return list(self._index)

    def source(self, key: str) -> TensorSource:
        return self._index[key][0]

    def get(self, key: str) -> torch.Tensor:
        src, getter = self._index[key]
        try:
            return getter()
        except Exception as exc:  # a truncated file often fails only when the tensor is touched
            raise WeightLoadError(str(src.file), src.key, f"unreadable tensor: {exc}") from exc

    def _add(self, path: Path) -> None:
        if not path.is_file():
            raise WeightLoadError(str(path), None, "file not found")
        if path.suffix == ".safetensors":
            self._add_safetensors(path)
        elif path.suffix in {".pth", ".pt", ".bin"}:
            self._add_pickle(path)
        else:
            raise WeightLoadError(str(path), None, f"unsupported checkpoint format {path.suffix!r}")

    def _register(self, path: Path, file_key: str, getter: Callable[[], torch.Tensor]) -> None:
        key = self._key_map(file_key)
        if key is not None:
            self._index[key] = (TensorSource(path, file_key), getter)

    def _add_safetensors(self, path: Path) -> None:
        try:
            handle = self._stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
            keys = list(handle.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightLoadError(str(path), None, f"corrupt safetensors file: {exc}") from exc
        for k in keys:
            self._register(path, k, lambda h=handle, k=k: h.get_tensor(k))

    def _add_pickle(self, path: Path) -> None:
        try:
            sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:
            raise WeightLoadError(str(path), None, f"corrupt or unsafe checkpoint: {exc}") from exc
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping):
            raise WeightLoadError(str(path), None, "checkpoint does not hold a flat state dict")
        for k, v in sd.items():
            if not isinstance(v, torch.Tensor):
                raise WeightLoadError(str(path), k, "value is not a tensor")
            self._register(path, k, lambda v=v: v)


def _expected_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers, i.e. exactly what `state_dict()` would list."""
    return dict(module.state_dict(keep_vars=True))


def load_module(
    module: nn.Module,
    files: Iterable[Path | str],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    key_map: KeyMap | None = None,
    keep_dtype: Callable[[str], bool] = lambda key: False,
    strict: bool = True,
) -> nn.Module:
    """Fill `module` (typically built on the meta device) from checkpoint files, strictly.

    `dtype` casts floating-point weights (None keeps each module tensor's own dtype);
    `keep_dtype(key)` keeps selected keys (e.g. norms) in the module's declared dtype.
    Errors name the file and the key: missing file, corrupt file, missing key, unexpected key,
    shape mismatch.
    """
    device = torch.device(device)
    expected = _expected_tensors(module)
    files = [Path(f) for f in files]
    with CheckpointReader(files, key_map) as reader:
        available = set(reader.keys())
        missing = [k for k in expected if k not in available]
        if missing:
            where = ", ".join(str(f) for f in files)
            raise WeightLoadError(where, missing[0], f"missing key ({len(missing)} missing in all)")
        unexpected = sorted(available - set(expected))
        if unexpected and strict:
            src = reader.source(unexpected[0])
            raise WeightLoadError(str(src.file), src.key, f"unexpected key ({len(unexpected)} unexpected in all)")
        loaded: dict[str, torch.Tensor] = {}
        for key, want in expected.items():
            src = reader.source(key)
            tensor = reader.get(key)
            if tuple(tensor.shape) != tuple(want.shape):
                raise WeightLoadError(
                    str(src.file), src.key, f"shape {tuple(tensor.shape)} does not match expected {tuple(want.shape)}"
                )
            target = want.dtype if (dtype is None or not want.is_floating_point() or keep_dtype(key)) else dtype
            loaded[key] = tensor.to(device=device, dtype=target)
            del tensor
        module.load_state_dict(loaded, strict=strict, assign=True)
    _materialise_leftovers(module, device)
    return module


def _materialise_leftovers(module: nn.Module, device: torch.device) -> None:
    """Non-persistent buffers are not in checkpoints; modules rebuild them through `reset_buffers()`."""
    for sub in module.modules():
        reset = getattr(sub, "reset_buffers", None)
        if callable(reset) and any(b.device.type == "meta" for b in sub.buffers(recurse=False)):
            reset(device)
    leftovers = [n for n, t in _iter_tensors(module) if t.device.type == "meta"]
    if leftovers:
        raise WeightLoadError("<module>", leftovers[0], "tensor left on the meta device after loading")


def _iter_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


def read_state_dict(files: Iterable[Path | str], key_map: KeyMap | None = None) -> dict[str, torch.Tensor]:
    """Whole state dict on CPU in its stored dtype; for small files (tests, tiny model, LoRA)."""
    with CheckpointReader(files, key_map) as reader:
        return {k: reader.get(k).clone() for k in reader.keys()}
