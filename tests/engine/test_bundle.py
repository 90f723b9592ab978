"""load_bundle_into: the engine's DiT loads from a bundle to the same tensors as from the originals."""
from __future__ import annotations

import pytest
import torch

from tests.tools.weights.conftest import tiny_layout, tiny_root  # noqa: F401 - the same session checkpoint
from worker.engine.formats.bundle import (
    FP8_ABS_STEPS,
    FP8_REL_ERR,
    bundle_state_dict,
    is_bundle,
    load_bundle_into,
    read_bundle_metadata,
)
from worker.engine.models.dit import InfiniteTalkDiT
from worker.engine.errors import WeightLoadError
from worker.engine.formats.loaders import load_module
from testkit.tiny import TINY_DIT
from tools.weights.repack import repack


def _meta_dit() -> InfiniteTalkDiT:
    with torch.device("meta"):
        return InfiniteTalkDiT(TINY_DIT)


@pytest.fixture(scope="module")
def bundles(tiny_layout, tmp_path_factory):
    d = tmp_path_factory.mktemp("bundles")
    return {
        dt: repack(tiny_layout.dit_files, d / f"{dt}.safetensors", dtype=dt, config_file=tiny_layout.dit_config).path
        for dt in ("bfloat16", "float8_e4m3fn")
    }


def test_bf16_bundle_loads_to_the_same_tensors_as_the_originals(tiny_layout, bundles):
    from_bundle = load_bundle_into(_meta_dit(), bundles["bfloat16"], "cpu", torch.bfloat16).state_dict()
    original = load_module(_meta_dit(), tiny_layout.dit_files, dtype=torch.bfloat16).state_dict()
    assert from_bundle.keys() == original.keys()
    for key in original:
        assert from_bundle[key].dtype == original[key].dtype, key
        assert torch.equal(from_bundle[key], original[key]), key


def test_fp8_bundle_loads_within_the_stated_tolerance(tiny_layout, bundles):
    got = load_bundle_into(_meta_dit(), bundles["float8_e4m3fn"], "cpu", torch.float32).state_dict()
    ref = load_module(_meta_dit(), tiny_layout.dit_files, dtype=torch.float32).state_dict()
    quantized = 0
    for key, want in ref.items():
        diff = (got[key] - want).abs()
        if torch.equal(got[key], want.to(torch.bfloat16).float()):
            continue
        quantized += 1
        row_max = want.abs().amax(dim=1, keepdim=True)
        assert bool((diff <= FP8_REL_ERR * want.abs() + FP8_ABS_STEPS * row_max / 448.0 + 1e-12).all()), key
        assert float(diff.norm() / want.norm()) < 0.04, key
    assert quantized > 0


def test_the_model_runs_the_same_from_a_bf16_bundle(tiny_layout, bundles):
    a = load_bundle_into(_meta_dit(), bundles["bfloat16"], "cpu", torch.float32)
    b = load_module(_meta_dit(), tiny_layout.dit_files, dtype=torch.bfloat16).float()
    for (ka, va), (kb, vb) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
        assert ka == kb and torch.equal(va, vb)


def test_metadata_and_detection(bundles, tiny_layout):
    meta = read_bundle_metadata(bundles["float8_e4m3fn"])
    assert meta["dtype"] == "float8_e4m3fn" and meta["scale_suffix"] == ".scale"
    assert meta["sources"][-1]["file"] == "infinitetalk.safetensors"
    assert is_bundle(bundles["bfloat16"])
    assert not is_bundle(tiny_layout.infinitetalk_file)
    assert not any(k.endswith(".scale") for k in bundle_state_dict(bundles["float8_e4m3fn"]))


def test_a_module_that_does_not_fit_is_refused_by_key(bundles):
    from dataclasses import replace

    with torch.device("meta"):
        bigger = InfiniteTalkDiT(replace(TINY_DIT, num_layers=TINY_DIT.num_layers + 1))
    with pytest.raises(WeightLoadError, match=f"blocks.{TINY_DIT.num_layers}."):
        load_bundle_into(bigger, bundles["bfloat16"])


def test_a_truncated_bundle_is_named(bundles, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(bundles["bfloat16"].read_bytes()[:-64])
    with pytest.raises(WeightLoadError, match="cut.safetensors"):
        load_bundle_into(_meta_dit(), cut)
