"""CLIP vision tower: golden parity, full-size key layout, strict loading of the original dict."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import golden_cases
from worker.engine.models.clip_visual import (
    CLIPVisionConfig,
    CLIPVisionTower,
    original_key_map,
    split_original_state_dict,
)

ATOL = 1e-4
INPUT_KEYS = {"input_image"}


def _is_clip_case(folder: Path) -> bool:
    files = ("weights.safetensors", "tensors.safetensors", "meta.json")
    if not all((folder / f).is_file() for f in files):
        return False
    meta = json.loads((folder / "meta.json").read_text())
    return "factory_overrides" in meta and "input_shape" in meta


CLIP_CASES = golden_cases(_is_clip_case)


def _load_case(folder: Path) -> tuple[CLIPVisionTower, dict[str, torch.Tensor], dict]:
    meta = json.loads((folder / "meta.json").read_text())
    model = CLIPVisionTower(CLIPVisionConfig.from_factory_overrides(meta["factory_overrides"])).eval()
    model.load_original_state_dict(load_file(folder / "weights.safetensors"))
    return model, load_file(folder / "tensors.safetensors"), meta


@pytest.mark.parametrize("case", CLIP_CASES, ids=lambda p: p.name)
def test_golden_parity(golden_dir: Path, case: Path) -> None:
    model, tensors, meta = _load_case(case)
    kept = meta.get("kept_from_real", {})
    for key, attr in (("image_size", "image_size"), ("patch_size", "patch_size"),
                      ("norm_eps", "eps"), ("mlp_ratio", "mlp_ratio")):
        if key in kept:
            assert getattr(model.cfg, attr) == kept[key], key
    image = tensors["input_image"]
    assert list(image.shape) == meta["input_shape"]

    with torch.no_grad():
        pixels = model.preprocess(image)
        produced = {"tokens_after_pre_norm": model.embed(pixels), "features": model.encode(image)}
    if "output_shape" in meta:
        assert list(produced["features"].shape) == meta["output_shape"]

    for name, expected in tensors.items():
        if name in INPUT_KEYS:
            continue
        if name not in produced:
            pytest.fail(f"golden tensor {name!r} has no counterpart in this test")
        got = produced[name]
        assert got.shape == expected.shape, name
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.parametrize("case", CLIP_CASES, ids=lambda p: p.name)
def test_bf16_close_to_float32(golden_dir: Path, case: Path) -> None:
    model, tensors, _ = _load_case(case)
    ref = tensors["features"]
    out = model.to(torch.bfloat16).encode(tensors["input_image"])
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()


@pytest.mark.parametrize("case", CLIP_CASES, ids=lambda p: p.name)
def test_list_input_matches_batched_input(golden_dir: Path, case: Path) -> None:
    model, tensors, _ = _load_case(case)
    image = tensors["input_image"]
    batch = torch.cat([image, image.flip(-1)])
    torch.testing.assert_close(model.encode(list(batch)), model.encode(batch))


def test_full_size_keys_match_manifest(golden_dir: Path) -> None:
    manifest = json.loads((golden_dir / "full_size_key_manifests.json").read_text())["clip_xlm_roberta_vit_h_14"]
    with torch.device("meta"):
        model = CLIPVisionTower(CLIPVisionConfig())
    got = {"visual." + k: list(v.shape) for k, v in model.state_dict().items()}
    visual = {k: v for k, v in manifest.items() if k.startswith("visual.")}
    assert list(got) == list(visual)
    assert got == visual
    assert len(got) == 392
    rest = set(manifest) - set(visual)
    assert all(original_key_map(k) is None for k in rest)
    assert model.cfg.num_tokens == 257


def test_meta_tower_loads_original_dict_with_assign() -> None:
    cfg = CLIPVisionConfig.tiny()
    torch.manual_seed(0)
    src = CLIPVisionTower(cfg)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.1)
    original = {"visual." + k: v for k, v in src.state_dict().items()}
    original["log_scale"] = torch.tensor(4.6)
    original["textual.token_embedding.weight"] = torch.zeros(3, 4)
    with torch.device("meta"):
        model = CLIPVisionTower(cfg)
    model.load_original_state_dict(original, assign=True)
    image = torch.rand(1, 3, 1, 40, 30) * 2 - 1
    torch.testing.assert_close(model.encode(image), src.encode(image))


def test_strict_load_fails_on_missing_visual_key() -> None:
    cfg = CLIPVisionConfig.tiny()
    original = {"visual." + k: v for k, v in CLIPVisionTower(cfg).state_dict().items()}
    del original["visual.post_norm.bias"]
    with pytest.raises(RuntimeError, match=r"post_norm\.bias"):
        CLIPVisionTower(cfg).load_original_state_dict(original)


def test_strict_load_fails_on_unknown_key() -> None:
    cfg = CLIPVisionConfig.tiny()
    original = {"visual." + k: v for k, v in CLIPVisionTower(cfg).state_dict().items()}
    original["visual.proj"] = torch.zeros(2)
    with pytest.raises(RuntimeError, match="Unexpected"):
        CLIPVisionTower(cfg).load_original_state_dict(original)
    original.pop("visual.proj")
    original["logit_bias"] = torch.zeros(())
    with pytest.raises(RuntimeError, match="logit_bias"):
        CLIPVisionTower(cfg).load_original_state_dict(original)


def test_split_drops_only_text_side() -> None:
    sd = {"visual.head": torch.zeros(1), "textual.norm.weight": torch.zeros(1), "log_scale": torch.zeros(())}
    assert list(split_original_state_dict(sd)) == ["head"]


def test_factory_overrides() -> None:
    cfg = CLIPVisionConfig.from_factory_overrides({"vision_dim": 64, "vision_heads": 4, "text_dim": 8})
    assert (cfg.dim, cfg.num_heads, cfg.num_layers) == (64, 4, 32)
    with pytest.raises(ValueError):
        CLIPVisionConfig.from_factory_overrides({"vision_post_norm": True})
    with pytest.raises(ValueError):
        CLIPVisionConfig.from_factory_overrides({"vision_width": 3})


@pytest.mark.parametrize("case", CLIP_CASES, ids=lambda p: p.name)
def test_from_original_pth_checkpoint(golden_dir: Path, case: Path, tmp_path: Path) -> None:
    meta = json.loads((case / "meta.json").read_text())
    cfg = CLIPVisionConfig.from_factory_overrides(meta["factory_overrides"])
    pth = tmp_path / "clip.pth"
    torch.save(load_file(case / "weights.safetensors"), pth)
    model = CLIPVisionTower.from_original_checkpoint(pth, cfg, dtype=torch.float32)
    tensors = load_file(case / "tensors.safetensors")
    torch.testing.assert_close(model.encode(tensors["input_image"]), tensors["features"], atol=ATOL, rtol=0)
