"""The strict loader: real files in both formats, and every failure names the file and the key."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from worker.engine.errors import WeightLoadError
from worker.engine.formats.loaders import CheckpointReader, load_module, read_state_dict


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "proj.weight": torch.randn(3, 4, generator=g),
        "proj.bias": torch.randn(3, generator=g),
        "norm.weight": torch.randn(3, generator=g),
        "norm.bias": torch.randn(3, generator=g),
        "step": torch.tensor(7),
    }


def _meta_small() -> Small:
    with torch.device("meta"):
        return Small()


def test_loads_split_safetensors_onto_meta_module_with_dtype(tmp_path):
    w = _weights()
    save_file({k: v for k, v in w.items() if k.startswith("proj")}, str(tmp_path / "a.safetensors"))
    save_file({k: v for k, v in w.items() if not k.startswith("proj")}, str(tmp_path / "b.safetensors"))
    m = load_module(_meta_small(), [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], dtype=torch.bfloat16,
                    keep_dtype=lambda k: k.startswith("norm"))
    assert m.proj.weight.dtype == torch.bfloat16 and m.proj.weight.device.type == "cpu"
    assert m.norm.weight.dtype == torch.float32
    assert m.step.dtype == torch.int64 and int(m.step) == 7
    torch.testing.assert_close(m.proj.weight.float(), w["proj.weight"].bfloat16().float())
    torch.testing.assert_close(m.norm.bias, w["norm.bias"])


def test_loads_pth_with_weights_only(tmp_path):
    w = _weights(1)
    torch.save(w, tmp_path / "m.pth")
    m = load_module(_meta_small(), [tmp_path / "m.pth"])
    torch.testing.assert_close(m.proj.bias, w["proj.bias"])


def test_pth_holding_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"proj.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightLoadError, match="evil.pth"):
        load_module(_meta_small(), [tmp_path / "evil.pth"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WeightLoadError, match="nope.safetensors.*file not found"):
        load_module(_meta_small(), [tmp_path / "nope.safetensors"])


def test_corrupt_file_is_named(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(_weights(), str(good))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(WeightLoadError, match="bad.safetensors"):
        load_module(_meta_small(), [bad])


def test_missing_key_is_named(tmp_path):
    w = _weights()
    del w["norm.bias"]
    save_file(w, str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightLoadError, match="'norm.bias'.*missing key"):
        load_module(_meta_small(), [tmp_path / "m.safetensors"])


def test_unexpected_key_is_named(tmp_path):
    w = _weights()
    w["extra.weight"] = torch.zeros(1)
    save_file(w, str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightLoadError, match="'extra.weight'.*m.safetensors.*unexpected"):
        load_module(_meta_small(), [tmp_path / "m.safetensors"])


def test_shape_mismatch_names_file_and_key(tmp_path):
    w = _weights()
    w["proj.weight"] = torch.zeros(4, 4)
    save_file(w, str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightLoadError, match=r"'proj.weight' of .*m.safetensors.*\(4, 4\).*\(3, 4\)"):
        load_module(_meta_small(), [tmp_path / "m.safetensors"])


def test_key_map_drops_and_renames(tmp_path):
    w = {f"visual.{k}": v for k, v in _weights().items()}
    w["textual.x"] = torch.zeros(2)
    save_file(w, str(tmp_path / "clip.safetensors"))

    def key_map(k: str) -> str | None:
        return k.removeprefix("visual.") if k.startswith("visual.") else None

    m = load_module(_meta_small(), [tmp_path / "clip.safetensors"], key_map=key_map)
    torch.testing.assert_close(m.proj.weight, w["visual.proj.weight"])


def test_later_files_override_earlier(tmp_path):
    save_file(_weights(0), str(tmp_path / "a.safetensors"))
    save_file({"proj.bias": torch.full((3,), 5.0)}, str(tmp_path / "b.safetensors"))
    sd = read_state_dict([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert sd["proj.bias"].tolist() == [5.0, 5.0, 5.0]
    with CheckpointReader([tmp_path / "a.safetensors"]) as reader:
        assert reader.source("proj.bias").file.name == "a.safetensors"
