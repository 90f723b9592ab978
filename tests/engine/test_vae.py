"""Parity of our Wan2.1 VAE with the upstream reference tensors, plus its structural contracts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import golden_cases
from worker.engine.models.vae import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    VAEConfig,
    WanVAE,
    WanVAEModel,
)

ATOL = 1e-4
CASE_FILES = ("vae.safetensors", "inputs.safetensors", "outputs.safetensors", "config.json")


def is_vae_case(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CASE_FILES)


VAE_CASES = golden_cases(is_vae_case)
case_param = pytest.mark.parametrize("case", VAE_CASES, ids=[p.name for p in VAE_CASES])


def load_case(case: Path) -> tuple[VAEConfig, dict, dict, dict]:
    cfg = VAEConfig.from_json(case / "config.json")
    return (
        cfg,
        load_file(case / "vae.safetensors"),
        load_file(case / "inputs.safetensors"),
        load_file(case / "outputs.safetensors"),
    )


def build(case: Path) -> tuple[WanVAE, dict, dict]:
    cfg, weights, inputs, outputs = load_case(case)
    return WanVAE.from_state_dict(weights, cfg), inputs, outputs


def frames_for(latent_frames: int) -> int:
    return 4 * (latent_frames - 1) + 1


def test_default_config_is_published_vae() -> None:
    cfg = VAEConfig()
    assert (cfg.dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks) == (96, 16, (1, 2, 4, 4), 2)
    assert cfg.attn_scales == () and cfg.temperal_downsample == (False, True, True)
    assert len(cfg.latents_mean) == len(cfg.latents_std) == 16


@case_param
def test_config_from_json_matches_published_tables(case: Path) -> None:
    """The case's stored statistics are the published tables (as float32)."""
    raw = json.loads((case / "config.json").read_text())
    cfg = VAEConfig.from_json(case / "config.json")
    assert cfg.dim == raw["dim"] and cfg.z_dim == raw["z_dim"]
    assert cfg.dim_mult == tuple(raw["dim_mult"])
    if "latents_mean" in raw:
        assert torch.equal(
            torch.tensor(cfg.latents_mean, dtype=torch.float32),
            torch.tensor(WAN21_LATENTS_MEAN, dtype=torch.float32),
        )
        assert torch.equal(
            torch.tensor(cfg.latents_std, dtype=torch.float32),
            torch.tensor(WAN21_LATENTS_STD, dtype=torch.float32),
        )


@case_param
def test_strict_loading(case: Path) -> None:
    cfg, weights, _, _ = load_case(case)
    model = WanVAEModel(cfg)
    assert set(model.state_dict()) == set(weights)
    model.load_state_dict(weights, strict=True)

    missing = dict(weights)
    missing.pop(next(iter(missing)))
    with pytest.raises(RuntimeError, match="Missing key"):
        WanVAE.from_state_dict(missing, cfg)
    extra = dict(weights, **{"decoder.bogus.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        WanVAE.from_state_dict(extra, cfg)


@case_param
def test_parity_with_upstream(case: Path) -> None:
    vae, inputs, outputs = build(case)
    video, image, latent = inputs["video"][None], inputs["image"][None], inputs["latent"][None]

    enc_video = vae.encode(video)

    def first_frames(name: str) -> torch.Tensor:
        return vae.encode(video[:, :, : frames_for(outputs[name].shape[1])])

    producers = {
        "enc_video": lambda: enc_video,
        "enc_video_first5": lambda: first_frames("enc_video_first5"),
        "enc_image": lambda: vae.encode(image),
        "dec_latent": lambda: vae.decode(latent),
        "dec_latent_unclamped": lambda: vae.decode_unclamped(latent),
        "dec_of_enc_video": lambda: vae.decode(enc_video),
    }
    unknown = set(outputs) - set(producers)
    assert not unknown, f"outputs this test does not know how to reproduce: {sorted(unknown)}"
    assert outputs, "case holds no outputs"

    for name, expected in outputs.items():
        got = producers[name]()[0]
        assert got.dtype == torch.float32
        assert got.shape == expected.shape, name
        diff = (got - expected).abs().max().item()
        assert diff <= ATOL, f"{name}: max abs diff {diff:.3g} > {ATOL}"


@case_param
def test_encode_is_causal(case: Path) -> None:
    """Chunked caches make a prefix's latents independent of later frames."""
    vae, inputs, _ = build(case)
    video = inputs["video"][None]
    full = vae.encode(video)
    prefix = vae.encode(video[:, :, :5])
    assert torch.equal(prefix, full[:, :, :2])


@case_param
def test_decode_iter_matches_decode(case: Path) -> None:
    vae, inputs, _ = build(case)
    latent = inputs["latent"][None]
    groups = list(vae.decode_iter(latent))
    assert [g.shape[2] for g in groups] == [1] + [4] * (latent.shape[2] - 1)
    assert torch.equal(torch.cat(groups, dim=2), vae.decode(latent))
    raw = list(vae.decode_iter(latent, clamp=False))
    assert torch.equal(torch.cat(raw, dim=2), vae.decode_unclamped(latent))
    assert torch.equal(vae.decode(latent), vae.decode_unclamped(latent).clamp(-1, 1))


@case_param
def test_batch_matches_single(case: Path) -> None:
    vae, inputs, _ = build(case)
    video = inputs["video"][None, :, :5]
    batch = torch.cat([video, video.flip(-1)], dim=0)
    enc = vae.encode(batch)
    assert (enc[1:] - vae.encode(video.flip(-1))).abs().max() <= 1e-5
    dec = vae.decode(enc)
    assert (dec[:1] - vae.decode(enc[:1])).abs().max() <= 1e-5


@case_param
def test_bfloat16_runs_close_to_float32(case: Path) -> None:
    """bf16 is a supported run mode: outputs stay float32 and near the float32 ones."""
    cfg, weights, inputs, _ = load_case(case)
    vae32 = WanVAE.from_state_dict(weights, cfg)
    vae16 = WanVAE.from_state_dict(weights, cfg, dtype=torch.bfloat16)
    assert vae16.dtype == torch.bfloat16
    video = inputs["video"][None, :, :5]
    enc16 = vae16.encode(video)
    assert enc16.dtype == torch.float32
    assert (enc16 - vae32.encode(video)).abs().max() < 0.1
    dec16 = vae16.decode(enc16)
    assert dec16.dtype == torch.float32 and torch.isfinite(dec16).all()
    assert (dec16 - vae32.decode(enc16)).abs().mean() < 0.05


@case_param
def test_encode_rejects_frame_counts_off_the_grid(case: Path) -> None:
    vae, inputs, _ = build(case)
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.encode(inputs["video"][None, :, :4])


def test_meta_model_matches_full_size_manifest(golden_dir: Path) -> None:
    manifest_path = golden_dir / "full_size_key_manifests.json"
    if not manifest_path.is_file():
        pytest.skip("no full_size_key_manifests.json in the golden set")
    manifest = json.loads(manifest_path.read_text())["wan21_vae"]
    model = WanVAEModel.on_meta(VAEConfig())
    assert all(p.is_meta for p in model.parameters())
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(manifest)
    assert shapes == manifest


def test_meta_model_can_be_materialised_by_assignment() -> None:
    """Weights assigned onto a meta-built model land with their own device and dtype."""
    cfg = VAEConfig(dim=4)
    reference = WanVAEModel(cfg)
    state = {k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}
    vae = WanVAE.from_state_dict(state, cfg)
    assert vae.dtype == torch.bfloat16
    assert not any(p.is_meta for p in vae.model.parameters())
    assert not any(p.requires_grad for p in vae.model.parameters())
