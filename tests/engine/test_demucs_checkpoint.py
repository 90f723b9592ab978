"""The htdemucs `.th` converter: reads a package shaped like the published one without importing or running
anything it names, checks it against our network, writes the safetensors file the worker loads."""
from __future__ import annotations

import os
import sys
import types
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from testkit.tiny import TINY_ISOLATION_SEED, randomise
from worker.engine.errors import WeightLoadError
from worker.engine.formats.demucs_checkpoint import convert_htdemucs, read_demucs_package
from worker.engine.models.separation import HTDemucs, SeparationConfig, VoiceIsolator

TINY = SeparationConfig.tiny()


class _RunsCode:
    """Unpickling this would run a shell command, if the converter let the pickle call what it names."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_package(path: Path, state: dict[str, torch.Tensor], marker: Path, **kwargs) -> None:
    """A file laid out as demucs saves its models: class, args, kwargs, float16 state, training config."""
    fake = types.ModuleType("demucs_release_stub.htdemucs")

    class HTDemucs:  # noqa: D401 - a stand-in for the published class, importable only while saving
        pass

    class DictConfig(dict):  # a container subclass, as the training configuration objects are
        pass

    class ListConfig(list):
        pass

    for cls in (HTDemucs, DictConfig, ListConfig):
        cls.__module__, cls.__qualname__ = fake.__name__, cls.__name__
        setattr(fake, cls.__name__, cls)
    parent = types.ModuleType("demucs_release_stub")
    parent.htdemucs = fake
    sys.modules[parent.__name__], sys.modules[fake.__name__] = parent, fake
    try:
        package = {
            "klass": HTDemucs,
            "args": (),
            "kwargs": {"sources": list(TINY.sources), "channels": TINY.channels, "bottom_channels": TINY.bottom_channels,
                       "t_heads": TINY.t_heads, "dconv_mode": 3, "segment": Fraction(TINY.segment_samples, 44100),
                       **kwargs},
            "state": {k: v.half() for k, v in state.items()},
            "training_args": _RunsCode(marker),
            "config": DictConfig(model="htdemucs", sources=ListConfig(["drums", "bass", "other", "vocals"])),
        }
        torch.save(package, path)
    finally:
        del sys.modules[fake.__name__], sys.modules[parent.__name__]


@pytest.fixture()
def state() -> dict[str, torch.Tensor]:
    return randomise(HTDemucs(TINY), TINY_ISOLATION_SEED)


def test_converts_a_published_style_package_without_running_it(tmp_path, state):
    src, marker = tmp_path / "htdemucs.th", tmp_path / "ran"
    _write_package(src, state, marker)
    with pytest.raises(Exception):
        torch.load(src, weights_only=True)  # why a restricted reader is needed at all
    result = convert_htdemucs(src, tmp_path / "out" / "htdemucs.safetensors", cfg=TINY)
    assert not marker.exists()
    written = load_file(str(result.path))
    assert set(written) == set(state) and result.tensors == len(state)
    for key, value in state.items():
        assert torch.equal(written[key], value.half()), key  # the published precision is kept
    iso = VoiceIsolator.from_file(result.path, cfg=TINY)  # and the worker's strict loader takes it
    assert next(iso.model.parameters()).dtype == torch.float32


def test_recorded_arguments_must_match(tmp_path, state):
    src = tmp_path / "a.th"
    _write_package(src, state, tmp_path / "ran", bottom_channels=0)
    with pytest.raises(WeightLoadError, match="bottom_channels=0"):
        convert_htdemucs(src, tmp_path / "o.safetensors", cfg=TINY)
    _write_package(src, state, tmp_path / "ran", sources=["drums", "bass", "other", "vocals", "guitar", "piano"])
    with pytest.raises(WeightLoadError, match="guitar"):
        convert_htdemucs(src, tmp_path / "o.safetensors", cfg=TINY)
    _write_package(src, state, tmp_path / "ran", segment=Fraction(10))
    with pytest.raises(WeightLoadError, match="segment"):
        convert_htdemucs(src, tmp_path / "o.safetensors", cfg=TINY)
    assert not (tmp_path / "o.safetensors").exists()


def test_keys_are_checked_strictly(tmp_path, state):
    src = tmp_path / "a.th"
    _write_package(src, {k: v for k, v in state.items() if k != "tdecoder.2.rewrite.bias"}, tmp_path / "ran")
    with pytest.raises(WeightLoadError, match=r"tdecoder\.2\.rewrite\.bias.*missing"):
        convert_htdemucs(src, tmp_path / "o.safetensors", cfg=TINY)
    with pytest.raises(WeightLoadError, match=r"channels=8, htdemucs here has 48"):
        convert_htdemucs(src, tmp_path / "o.safetensors")  # the published configuration by default
    torch.save(state, tmp_path / "bare.th")  # no recorded arguments: the shapes still tell
    with pytest.raises(WeightLoadError, match=r"encoder\.0\.conv\.weight.*shape"):
        convert_htdemucs(tmp_path / "bare.th", tmp_path / "o.safetensors")
    torch.save({"not": "a model"}, tmp_path / "b.th")
    with pytest.raises(WeightLoadError, match="not a demucs model"):
        read_demucs_package(tmp_path / "b.th")
    (tmp_path / "c.th").write_bytes(b"\x00garbage")
    with pytest.raises(WeightLoadError, match="cannot read"):
        read_demucs_package(tmp_path / "c.th")


def test_a_bare_state_dict_is_accepted(tmp_path, state):
    torch.save(state, tmp_path / "sd.th")
    got, kwargs = read_demucs_package(tmp_path / "sd.th")
    assert kwargs == {} and set(got) == set(state)


def test_a_release_name_carries_a_checksum_that_is_checked(tmp_path, state):
    import hashlib

    src = tmp_path / "x.th"
    _write_package(src, state, tmp_path / "ran")
    prefix = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    good = src.rename(tmp_path / f"955717e8-{prefix}.th")
    assert set(read_demucs_package(good)[0]) == set(state)
    bad = good.rename(tmp_path / "955717e8-00000000.th" if prefix != "00000000" else tmp_path / "955717e8-11111111.th")
    with pytest.raises(WeightLoadError, match="checksum mismatch"):
        read_demucs_package(bad)
