"""wav2vec2 embedder: parity with every tensor of the golden audio_embedding case(s), loading variants."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch

from tests.conftest import golden_cases
from worker.engine.models.audio_embed import Wav2Vec2Embedder
from worker.engine.audio_io import MIN_SAMPLES, SAMPLE_RATE, merge_speakers, prepare_audio
from worker.engine.errors import AudioDecodeError, WeightLoadError

ATOL = 1e-4


def _is_audio_case(p: Path) -> bool:
    return (p / "wav2vec2_tiny").is_dir() and (p / "tensors.safetensors").is_file() and (p / "speech_person1.wav").is_file()


AUDIO_CASES = golden_cases(_is_audio_case)


def _close(got: torch.Tensor | np.ndarray, want: np.ndarray, name: str) -> None:
    g = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert g.shape == want.shape, (name, g.shape, want.shape)
    err = float(np.max(np.abs(g.astype(np.float64) - want.astype(np.float64))))
    assert err <= ATOL, f"{name}: max abs err {err}"


_EMBEDDERS: dict[Path, Wav2Vec2Embedder] = {}


def _embedder(case: Path) -> Wav2Vec2Embedder:
    if case not in _EMBEDDERS:
        _EMBEDDERS[case] = Wav2Vec2Embedder.from_pretrained(case / "wav2vec2_tiny", device="cpu", dtype=torch.float32)
    return _EMBEDDERS[case]


@pytest.mark.parametrize("case", AUDIO_CASES, ids=lambda p: p.name)
def test_person1_every_stage_matches_golden(case: Path):
    t = load_file(str(case / "tensors.safetensors"))
    emb, inter = _embedder(case).embed_with_intermediates(prepare_audio(case / "speech_person1.wav"))
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    stages = {
        "p1_input_values": inter.input_values,
        "p1_conv_features": inter.conv_features,
        "p1_interp_features": inter.interp_features,
        "p1_projected": inter.projected,
        "p1_hidden_states_all": inter.hidden_states,
        "p1_embedding": emb,
    }
    checked = 0
    for name, got in stages.items():
        if name in t:
            _close(got, t[name], name)
            checked += 1
    assert checked, "case holds none of the person-1 tensors"
    meta_path = case / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if "seq_len_p1" in meta:
            assert emb.shape[0] == meta["seq_len_p1"]


@pytest.mark.parametrize("case", AUDIO_CASES, ids=lambda p: p.name)
def test_embedding_from_golden_loudnorm_input(case: Path):
    """Isolates the embedder from decoding: start from the stored loudness-normalised waveform."""
    t = load_file(str(case / "tensors.safetensors"))
    if "p1_loudnorm_16k" not in t or "p1_embedding" not in t:
        pytest.skip("case lacks p1_loudnorm_16k/p1_embedding")
    _close(_embedder(case).embed(t["p1_loudnorm_16k"]), t["p1_embedding"], "p1_embedding")


@pytest.mark.parametrize("case", AUDIO_CASES, ids=lambda p: p.name)
def test_add_mode_embeddings_match_golden(case: Path):
    t = load_file(str(case / "tensors.safetensors"))
    if not (case / "speech_person2.wav").is_file() or "add_person1_embedding" not in t:
        pytest.skip("case has no two-speaker add data")
    m = merge_speakers(prepare_audio(case / "speech_person1.wav"), prepare_audio(case / "speech_person2.wav"), "add")
    e = _embedder(case)
    _close(e.embed(m.person1), t["add_person1_embedding"], "add_person1_embedding")
    _close(e.embed(m.person2), t["add_person2_embedding"], "add_person2_embedding")
    # the reference embedded float64 tracks; the float32 ones carry the same values
    _close(e.embed(t["add_person2_16k"]), t["add_person2_embedding"], "add_person2_embedding (float64 input)")


# ---------------------------------------------------------------- loading variants


def _first_case() -> Path:
    if not AUDIO_CASES:
        pytest.skip("no golden audio_embedding case available")
    return AUDIO_CASES[0]


def _legacy_copy(src: Path, dst: Path, *, prefix: str, drop: str | None = None, reshape: str | None = None) -> Path:
    """Rewrite the tiny model as an older-style checkpoint: weight_g/weight_v, pytorch_model.bin, prefix, extras."""
    dst.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    sd = load_torch(str(src / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k2 = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        if drop is not None and k2 == drop:
            continue
        if reshape is not None and k2 == reshape:
            v = v[..., :-1].clone()
        out[prefix + k2] = v
    out[prefix + "quantizer.codevectors"] = torch.zeros(1, 4, 8)
    out["project_q.weight"] = torch.zeros(4, 4)
    torch.save(out, dst / "pytorch_model.bin")
    return dst


def test_loads_legacy_weight_norm_keys_identically(tmp_path: Path):
    case = _first_case()
    folder = case / "wav2vec2_tiny"
    keys = load_torch(str(folder / "model.safetensors")).keys()
    assert any("parametrizations.weight.original0" in k for k in keys), "golden model uses the new weight-norm names"
    legacy = _legacy_copy(folder, tmp_path / "legacy", prefix="wav2vec2.")
    audio = prepare_audio(case / "speech_person1.wav")
    want = _embedder(case).embed(audio)
    got = Wav2Vec2Embedder.from_pretrained(legacy, device="cpu", dtype=torch.float32).embed(audio)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_missing_key_names_file_and_key(tmp_path: Path):
    case = _first_case()
    bad = _legacy_copy(case / "wav2vec2_tiny", tmp_path / "bad", prefix="", drop="encoder.pos_conv_embed.conv.weight_g")
    with pytest.raises(WeightLoadError) as ei:
        Wav2Vec2Embedder.from_pretrained(bad)
    assert "pos_conv_embed.conv" in str(ei.value) and str(bad) in str(ei.value)


def test_shape_mismatch_names_file_and_key(tmp_path: Path):
    case = _first_case()
    bad = _legacy_copy(case / "wav2vec2_tiny", tmp_path / "bad", prefix="", reshape="feature_projection.projection.weight")
    with pytest.raises(WeightLoadError) as ei:
        Wav2Vec2Embedder.from_pretrained(bad)
    msg = str(ei.value)
    assert "feature_projection.projection.weight" in msg and "pytorch_model.bin" in msg


def test_folder_without_weights_raises(tmp_path: Path):
    case = _first_case()
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(case / "wav2vec2_tiny" / "config.json", d / "config.json")
    with pytest.raises(WeightLoadError):
        Wav2Vec2Embedder.from_pretrained(d)


# ---------------------------------------------------------------- shapes and edge cases


def test_shape_follows_video_frame_count():
    case = _first_case()
    e = _embedder(case)
    rng = np.random.default_rng(0)
    for n in (MIN_SAMPLES, SAMPLE_RATE, int(SAMPLE_RATE * 1.3) + 7):
        emb = e.embed(rng.standard_normal(n).astype(np.float32) * 0.1)
        assert emb.shape == (int(n / SAMPLE_RATE * 25), e.num_layers, e.hidden_size)
        assert emb.dtype == torch.float32 and bool(torch.isfinite(emb).all())


def test_explicit_seq_len():
    e = _embedder(_first_case())
    emb = e.embed(np.random.default_rng(1).standard_normal(SAMPLE_RATE).astype(np.float32), seq_len=40)
    assert emb.shape[0] == 40


def test_too_short_audio_raises():
    e = _embedder(_first_case())
    with pytest.raises(AudioDecodeError, match="too short"):
        e.embed(np.zeros(MIN_SAMPLES - 1, dtype=np.float32))


def test_bfloat16_returns_float32_close_to_reference():
    case = _first_case()
    e16 = Wav2Vec2Embedder.from_pretrained(case / "wav2vec2_tiny", device="cpu", dtype=torch.bfloat16)
    audio = prepare_audio(case / "speech_person1.wav")
    got = e16.embed(audio)
    want = _embedder(case).embed(audio)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert float((got - want).abs().max()) < 0.1
