"""Our wav2vec2 encoder against transformers' Wav2Vec2Model: key names, every hidden state, the normaliser, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import Wav2Vec2Config as HFConfig
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from worker.engine.errors import WeightLoadError
from worker.engine.models.audio_embed import Wav2Vec2Embedder
from worker.engine.models.wav2vec2 import (
    POS_CONV,
    Wav2Vec2Config,
    Wav2Vec2ConfigError,
    Wav2Vec2Encoder,
    WaveformNormalizer,
)


def _hf_small(**over) -> HFConfig:
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                conv_dim=[16] * 4, conv_kernel=[10, 3, 3, 2], conv_stride=[5, 2, 2, 2], conv_bias=False,
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    base.update(over)
    return HFConfig(**base)


def _save(model: Wav2Vec2Model, folder: Path) -> Path:
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_full_size_names_and_shapes_match_transformers():
    """chinese-wav2vec2-base is transformers' default config: same tensors under the same names (the positional
    convolution's weight-norm halves fold into one weight; masked_spec_embed is a training-only tensor)."""
    with torch.device("meta"):
        hf = Wav2Vec2Model(HFConfig())
        ours = Wav2Vec2Encoder(Wav2Vec2Config())
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    folded = {k for k in hf_shapes if k.startswith(POS_CONV + "parametrizations.weight.") or k.endswith("weight_g")
              or k.endswith("weight_v")}
    assert folded, "transformers' positional conv is weight-normed"
    assert our_shapes.pop(POS_CONV + "weight") == (768, 768 // 16, 128)
    expected = {k: v for k, v in hf_shapes.items() if k not in folded and k != "masked_spec_embed"}
    assert our_shapes == expected
    assert sum(v.numel() for v in ours.parameters()) > 90_000_000  # ~94M: the whole base encoder


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    norm=st.sampled_from(["group", "layer"]),
    stable=st.booleans(),
    pos_kernel=st.sampled_from([15, 16]),
    act=st.sampled_from(["gelu", "relu", "gelu_new"]),
    conv_bias=st.booleans(),
    seed=st.integers(0, 2**16),
    n=st.integers(1600, 5000),
)
def test_every_hidden_state_matches_transformers(tmp_path_factory, norm, stable, pos_kernel, act, conv_bias, seed, n):
    torch.manual_seed(seed)
    cfg = _hf_small(feat_extract_norm=norm, do_stable_layer_norm=stable, num_conv_pos_embeddings=pos_kernel,
                    hidden_act=act, feat_extract_activation=act, conv_bias=conv_bias)
    hf = Wav2Vec2Model(cfg).eval()
    folder = _save(hf, tmp_path_factory.mktemp("w2v"))
    ours = Wav2Vec2Embedder.from_pretrained(folder, device="cpu", dtype=torch.float32).model
    x = torch.randn(1, n)
    with torch.no_grad():
        want = hf(x, output_hidden_states=True)
        conv = ours.feature_extractor(x)
        got = ours.encoder.hidden_states(ours.feature_projection(conv.transpose(1, 2)))
        # transformers reports the normed conv features (the projection's layer norm) as extract_features
        normed = ours.feature_projection.layer_norm(conv.transpose(1, 2))
        torch.testing.assert_close(normed, want.extract_features, rtol=1e-5, atol=1e-5)
    assert len(got) == len(want.hidden_states) == cfg.num_hidden_layers + 1
    # Pre-LN: our last state is the final norm's output, as transformers 4 (upstream's) collected it; transformers 5
    # collects the un-normed last layer output there, and returns the normed one as last_hidden_state.
    compared = want.hidden_states[:-1] if stable else want.hidden_states
    for i, (g, w) in enumerate(zip(got, compared)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=f"hidden state {i}")
    torch.testing.assert_close(got[-1], want.last_hidden_state, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    x=st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=2, max_size=400),
    dtype=st.sampled_from([np.float32, np.float64]),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_normaliser_is_bit_identical_to_the_feature_extractor(x, dtype, scale):
    audio = np.asarray(x, dtype=dtype) * scale
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=False)
    want = np.asarray(fe(audio, sampling_rate=16000).input_values[0], dtype=np.float32)
    got = WaveformNormalizer()(audio)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def _folder_with(tmp_path: Path, config: dict | None = None, preprocessor: dict | None = None) -> Path:
    torch.manual_seed(0)
    folder = _save(Wav2Vec2Model(_hf_small()).eval(), tmp_path / "w2v")
    if config is not None:
        data = json.loads((folder / "config.json").read_text())
        data.update(config)
        (folder / "config.json").write_text(json.dumps(data))
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


@pytest.mark.parametrize("change, words", [
    ({"feat_extract_norm": "batch"}, "feat_extract_norm"),
    ({"hidden_act": "mish"}, "hidden_act"),
    ({"adapter_attn_dim": 16}, "adapter"),
    ({"conv_kernel": [10, 3, 3]}, "same length"),
    ({"num_attention_heads": 3}, "multiple of num_attention_heads"),
    ({"hidden_size": -4}, "positive integer"),
])
def test_unsupported_config_is_a_weight_load_error(tmp_path: Path, change: dict, words: str):
    folder = _folder_with(tmp_path, config=change)
    with pytest.raises(WeightLoadError, match=words) as err:
        Wav2Vec2Embedder.from_pretrained(folder)
    assert "config.json" in str(err.value)


@pytest.mark.parametrize("pre, words", [
    ({"sampling_rate": 8000}, "sampling_rate"),
    ({"feature_size": 80}, "feature_size"),
    ({"do_normalize": "yes"}, "do_normalize"),
    ([1, 2], "JSON object"),
])
def test_bad_preprocessor_config_is_a_weight_load_error(tmp_path: Path, pre, words: str):
    folder = _folder_with(tmp_path, preprocessor=pre)
    with pytest.raises(WeightLoadError, match=words):
        Wav2Vec2Embedder.from_pretrained(folder)


def test_do_normalize_false_passes_the_waveform_through(tmp_path: Path):
    folder = _folder_with(tmp_path, preprocessor={"feature_size": 1, "sampling_rate": 16000, "do_normalize": False})
    emb = Wav2Vec2Embedder.from_pretrained(folder)
    x = np.linspace(-0.5, 0.25, 800, dtype=np.float32)
    np.testing.assert_array_equal(emb.normalize(x), x)


def test_unreadable_config_is_a_weight_load_error(tmp_path: Path):
    folder = _folder_with(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightLoadError, match="unreadable config"):
        Wav2Vec2Embedder.from_pretrained(folder)


def test_direct_config_errors_name_the_field():
    with pytest.raises(Wav2Vec2ConfigError, match="conv_dim"):
        Wav2Vec2Config.from_dict({"conv_dim": [0, 4]})
    with pytest.raises(Wav2Vec2ConfigError, match="JSON object"):
        Wav2Vec2Config.from_dict([1])
