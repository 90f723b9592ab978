"""InfiniteTalk DiT parity with the reference forward (float32 goldens), checkpoint key layout and the
batch-first / meta-device / bf16 behaviour the engine relies on.

Covers worker/engine/models/dit.py and its parts (dit_blocks.py, audio_adapter.py, rope.py).
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import golden_cases
from worker.engine.models.audio_adapter import speaker_positions, split_audio_windows
from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT
from worker.engine.models.rope import apply_rope_1d, rope_1d_angles, rope_3d_channels

ATOL = 1e-4


def _is_dit_case(folder: Path) -> bool:
    if not all((folder / n).is_file() for n in ("inputs.safetensors", "output.safetensors", "meta.json")):
        return False
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "seq_len" in meta and "human_num" in meta


def _is_split_weights_case(folder: Path) -> bool:
    return (folder / "key_split.json").is_file() and (folder / "config.json").is_file()


DIT_CASES = golden_cases(_is_dit_case)
SPLIT_CASES = golden_cases(_is_split_weights_case)


def _meta(case: Path) -> dict:
    return json.loads((case / "meta.json").read_text())


def _weights_dir(case: Path) -> Path:
    return (case / _meta(case).get("weights_dir", ".")).resolve()


def _weight_files(weights_dir: Path, model: InfiniteTalkDiT) -> list[Path]:
    """The safetensors files of a weights folder that hold model parameters (a case folder may also hold
    its inputs/outputs beside them): recognised by their keys, not by file name."""
    names = set(model.state_dict())
    files = []
    for f in sorted(weights_dir.glob("*.safetensors")):
        with safe_open(f, framework="pt") as fh:
            keys = set(fh.keys())
        if keys and keys <= names:
            files.append(f)
    return files


def _checkpoint_state(weights_dir: Path, model: InfiniteTalkDiT) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(weights_dir, model):
        state.update(load_file(f))
    return state


@functools.lru_cache(maxsize=4)
def _load_model(weights_dir: Path) -> InfiniteTalkDiT:
    model = InfiniteTalkDiT(DiTConfig.from_json(weights_dir / "config.json"))
    model.load_state_dict(_checkpoint_state(weights_dir, model), strict=True)
    return model.eval()


def _model_inputs(case: Path) -> dict:
    """Golden inputs are unbatched the way the reference forward takes them; ours is batch-first."""
    x = load_file(case / "inputs.safetensors")
    return dict(
        latent=x["latent"][None],
        t=x["t"].reshape(1),
        context=x["context"][None],
        clip_fea=x["clip_fea"],
        y=x["y"],
        audio=x["audio"][None],
        ref_target_masks=x["ref_target_masks"],
    )


TOP_LEVEL = ("patch_embedding", "time_embedding", "time_projection", "text_embedding", "img_emb", "audio_proj", "head")


def _run_with_hooks(model: InfiniteTalkDiT, inputs: dict, **kwargs) -> tuple[torch.Tensor, dict]:
    """Forward with hooks at the reference's capture points; names follow the golden intermediates."""
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def fn(_module, _inp, out):
            if name.endswith(".self_attn"):
                captured[name + ".out"] = out[0]
                if out[1] is not None:
                    captured[name + ".x_ref_attn_map"] = out[1][0]  # batch element 0: [classes, L]
            else:
                captured[name] = out

        return fn

    for name in TOP_LEVEL:
        handles.append(getattr(model, name).register_forward_hook(hook(name)))
    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_hook(hook(f"blocks.{i}")))
        for sub in ("self_attn", "cross_attn", "audio_cross_attn"):
            handles.append(getattr(block, sub).register_forward_hook(hook(f"blocks.{i}.{sub}")))
    try:
        with torch.no_grad():
            out = model(**inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return out, captured


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert tuple(a.shape) == tuple(b.shape), f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("case", DIT_CASES, ids=lambda p: p.name)
def test_forward_matches_golden(golden_dir, case):
    meta = _meta(case)
    model = _load_model(_weights_dir(case))
    out, captured = _run_with_hooks(model, _model_inputs(case))
    ref = load_file(case / "output.safetensors")["output"]
    assert out.dtype == torch.float32
    assert _max_diff(out, ref) < ATOL

    inter_path = case / "intermediates.safetensors"
    if not inter_path.is_file():
        return
    failures = []
    for name, expected in load_file(inter_path).items():
        if name.endswith(".x_ref_attn_map") and meta["human_num"] == 1:
            # Skipped for one speaker by design; checked by test_forced_speaker_map_for_one_speaker.
            assert name not in captured
            continue
        assert name in captured, f"intermediate {name} was not produced"
        diff = _max_diff(captured[name], expected)
        if diff >= ATOL:
            failures.append(f"{name}: {diff:.3g}")
    assert not failures, "intermediates differ: " + ", ".join(failures)


@pytest.mark.parametrize(
    "case", [c for c in DIT_CASES if _meta(c)["human_num"] == 1], ids=lambda p: p.name
)
def test_forced_speaker_map_for_one_speaker(golden_dir, case):
    """The skipped map equals the reference's when forced, and cannot influence a one-speaker output."""
    model = _load_model(_weights_dir(case))
    inputs = _model_inputs(case)
    out_forced, captured = _run_with_hooks(model, inputs, compute_ref_attn_map=True)
    with torch.no_grad():
        out_auto = model(**inputs)
    assert torch.equal(out_forced, out_auto)

    frame_tokens = None
    inter_path = case / "intermediates.safetensors"
    if inter_path.is_file():
        for name, expected in load_file(inter_path).items():
            if name.endswith(".x_ref_attn_map"):
                assert _max_diff(captured[name], expected) < ATOL
    masks = inputs["ref_target_masks"]
    if bool((masks > 0).all()):
        # The pipeline's one-speaker masks are all ones: every class averages a full softmax row.
        grid = model.patch_embedding(torch.zeros(1, model.config.in_dim, *inputs["latent"].shape[2:])).shape[2:]
        frame_tokens = grid[1] * grid[2]
        for name, got in captured.items():
            if name.endswith(".x_ref_attn_map"):
                torch.testing.assert_close(got, torch.full_like(got, 1.0 / frame_tokens), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", DIT_CASES, ids=lambda p: p.name)
def test_batched_forward_equals_separate_calls(golden_dir, case):
    """Guidance passes share one batch: each batch element must equal its own single call."""
    model = _load_model(_weights_dir(case))
    a = _model_inputs(case)
    b = dict(a)
    g = torch.Generator().manual_seed(7)
    b["latent"] = torch.randn(a["latent"].shape, generator=g)
    b["t"] = a["t"] * 0.5
    b["context"] = torch.zeros_like(a["context"][:, :3])  # shorter prompt, padded inside
    b["audio"] = torch.randn(a["audio"].shape, generator=g) * 0.5
    batch = {
        "latent": torch.cat([a["latent"], b["latent"]]),
        "t": torch.cat([a["t"], b["t"]]),
        "context": torch.cat([a["context"], torch.nn.functional.pad(b["context"], (0, 0, 0, a["context"].shape[1] - 3))]),
        "clip_fea": torch.cat([a["clip_fea"], a["clip_fea"]]),
        "y": torch.cat([a["y"], a["y"]]),
        "audio": torch.cat([a["audio"], b["audio"]]),
        "ref_target_masks": a["ref_target_masks"],
    }
    with torch.no_grad():
        both = model(**batch)
        one = model(**a)
        two = model(**b)
    assert both.shape[0] == 2
    assert _max_diff(both[:1], one) < 1e-5
    assert _max_diff(both[1:], two) < 1e-5


@pytest.mark.parametrize("case", DIT_CASES, ids=lambda p: p.name)
def test_bf16_forward_runs_and_stays_close(golden_dir, case):
    model32 = _load_model(_weights_dir(case))
    model = InfiniteTalkDiT(model32.config)
    model.load_state_dict(model32.state_dict())
    model = model.to(torch.bfloat16).eval()
    inputs = _model_inputs(case)
    with torch.no_grad():
        out = model(**inputs)
    ref = load_file(case / "output.safetensors")["output"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.1, f"bf16 relative error {rel:.3f}"


def test_two_speakers_need_masks(golden_dir):
    cases = [c for c in DIT_CASES if _meta(c)["human_num"] == 2]
    if not cases:
        pytest.skip("no two-speaker DiT case")
    model = _load_model(_weights_dir(cases[0]))
    inputs = _model_inputs(cases[0])
    inputs["ref_target_masks"] = None
    with pytest.raises(ValueError, match="ref_target_masks"):
        model(**inputs)


def test_context_longer_than_text_len_rejected(golden_dir):
    if not DIT_CASES:
        pytest.skip("no DiT case")
    model = _load_model(_weights_dir(DIT_CASES[0]))
    inputs = _model_inputs(DIT_CASES[0])
    inputs["context"] = torch.zeros(1, model.config.text_len + 1, model.config.text_dim)
    with pytest.raises(ValueError, match="text_len|at most"):
        model(**inputs)


# ---------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda p: p.name)
def test_state_dict_matches_checkpoint_split(golden_dir, case):
    split = json.loads((case / "key_split.json").read_text())
    model = InfiniteTalkDiT(DiTConfig.from_json(case / "config.json"))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(shapes) == set(split["base_keys"]) | set(split["infinitetalk_keys"])
    assert shapes == {k: list(v) for k, v in split["shapes"].items()}

    files = _weight_files(case, model)
    result = model.load_state_dict(_checkpoint_state(case, model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Split as the real checkpoints: one file with the base Wan keys, one with exactly the InfiniteTalk keys.
    key_sets = [set(load_file(f)) for f in files]
    assert set(split["infinitetalk_keys"]) in key_sets
    assert set(split["base_keys"]) in key_sets


def test_full_size_meta_model_matches_manifest(golden_dir):
    manifest_path = golden_dir / "full_size_key_manifests.json"
    if not manifest_path.is_file():
        pytest.skip("full_size_key_manifests.json missing")
    entry = json.loads(manifest_path.read_text())["infinitetalk_dit_14B"]
    cfg = DiTConfig.full_size()
    assert DiTConfig.from_dict(entry["config"]) == cfg

    start = time.perf_counter()
    with torch.device("meta"):
        model = InfiniteTalkDiT(cfg)
    assert time.perf_counter() - start < 20
    assert all(p.is_meta for p in model.parameters())

    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {**entry["base_wan21_keys"], **entry["infinitetalk_file_keys"]}
    assert len(shapes) == entry["n_keys"]
    assert set(shapes) == set(expected)
    assert shapes == {k: list(v) for k, v in expected.items()}
    n_base = sum(p.numel() for k, p in model.state_dict().items() if k in entry["base_wan21_keys"])
    n_adapter = sum(p.numel() for k, p in model.state_dict().items() if k in entry["infinitetalk_file_keys"])
    assert (n_base, n_adapter) == (entry["n_params_base"], entry["n_params_infinitetalk"])


# ---------------------------------------------------------------------------------------------- config


def test_config_from_dict_defaults_and_ignored_keys():
    cfg = DiTConfig.from_dict(
        {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "i2v", "dim": 5120,
         "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "in_dim": 36, "num_heads": 40, "num_layers": 40,
         "out_dim": 16, "text_len": 512, "some_future_key": 3}
    )
    assert cfg == DiTConfig.full_size()
    assert cfg.text_dim == 4096 and cfg.patch_size == (1, 2, 2) and cfg.eps == 1e-6
    assert cfg.qk_norm and cfg.cross_attn_norm and cfg.norm_input_visual and cfg.norm_output_audio
    assert (cfg.audio_window, cfg.intermediate_dim, cfg.output_dim, cfg.context_tokens, cfg.vae_scale) == (5, 512, 768, 32, 4)
    assert cfg.head_dim == 128
    with pytest.raises(ValueError, match="i2v"):
        DiTConfig.from_dict({"model_type": "t2v"})
    with pytest.raises(Exception):
        cfg.dim = 1  # frozen


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda p: p.name)
def test_config_from_golden_json(golden_dir, case):
    raw = json.loads((case / "config.json").read_text())
    cfg = DiTConfig.from_json(case / "config.json")
    for key, value in raw.items():
        if key.startswith("_") or key == "model_type":
            continue
        got = getattr(cfg, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


# ---------------------------------------------------------------------------------------------- parts


def test_rope_3d_channel_split():
    assert rope_3d_channels(32) == (12, 10, 10)
    assert rope_3d_channels(128) == (44, 42, 42)


def test_rope_tables_cached_on_device():
    model = InfiniteTalkDiT(DiTConfig.from_dict(dict(dim=64, ffn_dim=64, num_heads=2, num_layers=1, text_dim=8,
                                                     text_len=4, intermediate_dim=4, output_dim=8, context_tokens=2)))
    first = model._rope.get((3, 3, 4), "cpu")
    assert model._rope.get((3, 3, 4), torch.device("cpu")) is first
    assert first.dtype == torch.complex128 and first.shape == (36, 1, 16)
    assert not any("freq" in k for k in model.state_dict())


def test_audio_window_selection():
    """Latent frame j>0 sees offsets -2..0 of its first frame, offset 0 of the middle two, 0..+2 of the last."""
    f, w = 9, 5
    audio = torch.zeros(1, f, w, 12, 768)
    for frame in range(f):
        for off in range(w):
            audio[0, frame, off] = frame * 10 + off
    first, later = split_audio_windows(audio)
    assert first.shape == (1, 1, 5, 12, 768) and later.shape == (1, 2, 8, 12, 768)
    assert first[0, 0, :, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert later[0, 0, :, 0, 0].tolist() == [10, 11, 12, 22, 32, 42, 43, 44]
    assert later[0, 1, :, 0, 0].tolist() == [50, 51, 52, 62, 72, 82, 83, 84]


def test_speaker_positions_ranges():
    amap = torch.tensor([[[0.9, 0.1, 0.5, 0.2], [0.1, 0.8, 0.2, 0.1], [0.0, 0.0, 0.6, 0.3]]])
    pos = speaker_positions(amap)[0]
    assert pos[0].item() == pytest.approx(4.0, abs=1e-6)  # person 1 maximum -> top of [0, 4]
    assert pos[1].item() == pytest.approx(24.0, abs=1e-6)  # person 2 maximum -> top of [20, 24]
    assert pos[2].item() == 12.0 and pos[3].item() == 12.0  # background


def test_rope_1d_rotates_pairs():
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    angles = rope_1d_angles(torch.tensor([1.0]), 4)
    out = apply_rope_1d(x, angles)
    # Pair 0 rotates by 1 rad, pair 1 by 1/100 rad.
    torch.testing.assert_close(out, torch.tensor([[0.5403023, 0.8414710, -0.0099998, 0.99995]]), atol=1e-6, rtol=0)


def test_init_weights_is_deterministic():
    cfg = DiTConfig.from_dict(dict(dim=64, ffn_dim=64, num_heads=2, num_layers=1, text_dim=8, text_len=4,
                                   intermediate_dim=4, output_dim=8, context_tokens=2))
    a = InfiniteTalkDiT(cfg).init_weights(torch.Generator().manual_seed(3))
    b = InfiniteTalkDiT(cfg).init_weights(torch.Generator().manual_seed(3))
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
