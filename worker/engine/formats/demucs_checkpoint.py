"""The published htdemucs checkpoint (a `.th` torch pickle) -> the safetensors file the worker reads.

The released file is a pickled dict: the model's class, its constructor arguments, its state dict (float16)
and the training's configuration objects. `torch.load(weights_only=True)` refuses it, because the dict names
the `demucs` class and configuration classes; loading it normally would import and run the `demucs`
package's code. So it is read here with a restricted unpickler: tensors and plain containers are rebuilt,
every other class the pickle names becomes an inert placeholder that only records its arguments. No code
from the file runs, and `demucs` need not be installed.

The conversion is strict: the recorded constructor arguments that shape the network must equal ours
(`SeparationConfig.published()`), and every key and shape must be exactly those of our network. The worker
then never reads a pickle at all (`separation.load_separation_strict` reads the safetensors file).
"""
from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worker.engine.errors import WeightLoadError
from worker.engine.models.separation import HTDemucs, SeparationConfig, check_keys_and_shapes

__all__ = ["ConvertedIsolation", "read_demucs_package", "convert_htdemucs"]

# constructor argument (as the published package records it) -> our config's value for it
_SHAPING = {
    "audio_channels": lambda c: c.audio_channels,
    "channels": lambda c: c.channels,
    "growth": lambda c: c.growth,
    "depth": lambda c: c.depth,
    "nfft": lambda c: c.nfft,
    "kernel_size": lambda c: c.kernel_size,
    "stride": lambda c: c.stride,
    "bottom_channels": lambda c: c.bottom_channels,
    "t_layers": lambda c: c.t_layers,
    "t_heads": lambda c: c.t_heads,
    "dconv_mode": lambda c: 3,
    "samplerate": lambda c: c.samplerate,
}


class _Placeholder:
    """Stands for any class or function a pickle names that is not a tensor part; it runs nothing."""

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # containers of an unknown class (a dict or list subclass) are filled item by item
    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("values", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("values", []).extend(values)

    def __repr__(self) -> str:
        return f"<{self.origin}>"


_ALLOWED = {
    ("collections", "OrderedDict"),
    ("fractions", "Fraction"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch._utils" and name.startswith("_rebuild_")):
            return super().find_class(module, name)
        if module == "torch" and (name.endswith("Storage") or name in {"Size", "device"} or
                                  isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        return type(name, (_Placeholder,), {"origin": f"{module}.{name}"})


class _RestrictedPickle:
    """What torch.load needs of a pickle module: an Unpickler (and `load` for legacy files)."""

    Unpickler = _Unpickler
    __name__ = "restricted_pickle"

    @staticmethod
    def load(file, **kwargs: Any) -> Any:
        return _Unpickler(file, **kwargs).load()


# Released files are named <signature>-<first 8 hex digits of the file's sha256>.th (955717e8-8726e21a.th).
_RELEASE_NAME = re.compile(r"^[0-9a-f]{8}-([0-9a-f]{8})\.th$")


def _check_release_checksum(p: Path) -> None:
    m = _RELEASE_NAME.match(p.name)
    if m is None:
        return
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(m.group(1)):
        raise WeightLoadError(str(p), None, f"checksum mismatch: the name promises sha256 {m.group(1)}..., the file "
                              f"has {digest.hexdigest()[:8]}... (a truncated or altered download)")


def read_demucs_package(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, recorded constructor keyword arguments) of a demucs `.th`; a bare state dict works too.
    A file with a release name is first checked against the checksum its name carries."""
    p = Path(path)
    if not p.is_file():
        raise WeightLoadError(str(p), None, "file not found")
    _check_release_checksum(p)
    try:
        raw = torch.load(str(p), map_location="cpu", pickle_module=_RestrictedPickle, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file
        raise WeightLoadError(str(p), None, f"cannot read the checkpoint: {exc}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("state"), dict):
        state, kwargs = raw["state"], raw.get("kwargs") if isinstance(raw.get("kwargs"), dict) else {}
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, kwargs = raw, {}
    else:
        raise WeightLoadError(str(p), None, "not a demucs model package (no 'state' dict of tensors)")
    if any("__quantized" in k for k in state):
        raise WeightLoadError(str(p), None, "a quantized demucs model (e.g. *_q); use the float htdemucs release")
    return dict(state), dict(kwargs)


@dataclass(frozen=True)
class ConvertedIsolation:
    path: Path
    tensors: int
    parameters: int


def convert_htdemucs(src: str | Path, out: str | Path, cfg: SeparationConfig | None = None) -> ConvertedIsolation:
    """Read the published `.th` (restricted), check it is htdemucs as we build it, write safetensors."""
    from safetensors.torch import save_file

    cfg = cfg or SeparationConfig.published()
    state, kwargs = read_demucs_package(src)
    sources = kwargs.get("sources")
    if sources is not None and tuple(sources) != cfg.sources:
        raise WeightLoadError(str(src), "sources", f"{list(sources)}; htdemucs separates {list(cfg.sources)}")
    for name, ours in _SHAPING.items():
        if name in kwargs and kwargs[name] != ours(cfg):
            raise WeightLoadError(str(src), name, f"the checkpoint was built with {name}={kwargs[name]!r}, "
                                  f"htdemucs here has {ours(cfg)!r}")
    segment = kwargs.get("segment")
    if segment is not None and int(segment * cfg.samplerate) != cfg.segment_samples:
        raise WeightLoadError(str(src), "segment", f"trained on {float(segment):g} s segments, htdemucs here on "
                              f"{cfg.segment_samples / cfg.samplerate:g} s")
    with torch.device("meta"):
        want = HTDemucs(cfg).state_dict()
    check_keys_and_shapes(state, want, src)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    tensors = {k: state[k].detach().contiguous() for k in want}
    save_file(tensors, str(tmp), metadata={"source": Path(src).name, "model": "htdemucs"})
    tmp.replace(out_path)
    return ConvertedIsolation(out_path, len(tensors), sum(t.numel() for t in tensors.values()))
