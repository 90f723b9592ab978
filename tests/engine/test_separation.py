"""htdemucs voice isolation: the published checkpoint's keys, parity with the reference implementation on a tiny
seeded instance (data made by tests/engine/data/make_htdemucs_reference.py), strict loading, the job-facing API."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from testkit.tiny import TINY_ISOLATION_SEED, ensure_tiny_isolation, isolation_test_signal, randomise
from worker.engine.errors import WeightLoadError
from worker.engine.models.separation import (
    HTDemucs,
    SeparationConfig,
    VoiceIsolator,
    load_separation_strict,
    separate,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tiny() -> HTDemucs:
    model = HTDemucs(SeparationConfig.tiny()).eval()
    model.load_state_dict(randomise(model, TINY_ISOLATION_SEED), strict=True)
    return model


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(DATA / "htdemucs_tiny_reference.safetensors")).items()}


def test_published_configuration_has_the_checkpoints_keys_and_shapes():
    manifest = json.loads((DATA / "htdemucs_keys.json").read_text())
    with torch.device("meta"):
        model = HTDemucs(SeparationConfig.published())
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == manifest
    assert len(got) == 533 and sum(np.prod(s) for s in got.values()) == 41_984_456
    # spot checks of published facts: 4 sources x stereo x (re, im) out of the last spectrogram decoder, the
    # 384 -> 512 projections, the packed q/k/v of the 512-wide transformer, the frequency embedding's 512 rows
    assert got["decoder.3.conv_tr.weight"] == [48, 16, 8, 1] and got["tdecoder.3.conv_tr.weight"] == [48, 8, 8]
    assert got["channel_upsampler.weight"] == [512, 384, 1]
    assert got["crosstransformer.layers.1.cross_attn.in_proj_weight"] == [1536, 512]
    assert got["freq_emb.embedding.weight"] == [512, 48]


def test_one_segment_matches_the_reference_implementation(tiny, reference):
    cfg = tiny.cfg
    with torch.no_grad():
        out = tiny(isolation_test_signal(cfg.segment_samples)[None])[0, cfg.sources.index("vocals")]
    ref = reference["forward_vocals"]
    assert out.shape == ref.shape
    # the reference is stored as float16: compare at that precision
    assert torch.allclose(out, ref, atol=2e-3 * ref.abs().max().item(), rtol=2e-3)
    assert ref.abs().max() > 0.05  # not a silent output that anything would match


def test_a_long_track_matches_the_reference_overlap_add(tiny, reference):
    cfg = tiny.cfg
    track = isolation_test_signal(int(2.2 * cfg.samplerate))  # three segments, the last one partial
    stems = separate(tiny, track, batch=2)
    ref = reference["separate_vocals"]
    got = stems[cfg.sources.index("vocals")]
    assert got.shape == ref.shape == track.shape
    assert torch.allclose(got, ref, atol=2e-3 * ref.abs().max().item(), rtol=2e-3)


def test_batching_does_not_change_the_result(tiny):
    track = isolation_test_signal(int(1.7 * tiny.cfg.samplerate))
    assert torch.allclose(separate(tiny, track, batch=1), separate(tiny, track, batch=3), atol=1e-5)


def test_spectrogram_round_trip_away_from_the_edges(tiny):
    # The edge frames are dropped on the way in (the network never sees them) and the Nyquist bin too, so
    # the inverse restores the signal except within one window of either end.
    x = isolation_test_signal(12345)[None]
    back = tiny.inverse_spectrogram(tiny.spectrogram(x), x.shape[-1])
    assert back.shape == x.shape
    inner = slice(tiny.cfg.nfft, -tiny.cfg.nfft)
    assert torch.allclose(back[..., inner], x[..., inner], atol=1e-4)
    assert not torch.allclose(back[..., :64], x[..., :64], atol=1e-2)


def test_strict_loading_names_the_key(tmp_path):
    path = ensure_tiny_isolation(tmp_path)
    weights = load_file(str(path))
    model = HTDemucs(SeparationConfig.tiny())
    load_separation_strict(model, path)
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key

    broken = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in weights.items() if k != "crosstransformer.layers_t.3.norm3.weight"}, str(broken))
    with pytest.raises(WeightLoadError, match=r"crosstransformer\.layers_t\.3\.norm3\.weight.*missing"):
        load_separation_strict(HTDemucs(SeparationConfig.tiny()), broken)
    extra = tmp_path / "extra.safetensors"
    save_file({**weights, "decoder.0.norm1.weight": torch.ones(3)}, str(extra))
    with pytest.raises(WeightLoadError, match=r"decoder\.0\.norm1\.weight.*not part of htdemucs"):
        load_separation_strict(HTDemucs(SeparationConfig.tiny()), extra)
    wrong = tmp_path / "wrong.safetensors"
    save_file({**weights, "channel_upsampler.bias": torch.zeros(7)}, str(wrong))
    with pytest.raises(WeightLoadError, match=r"channel_upsampler\.bias.*shape \(7,\)"):
        load_separation_strict(HTDemucs(SeparationConfig.tiny()), wrong)
    with pytest.raises(WeightLoadError, match="not found"):
        load_separation_strict(HTDemucs(SeparationConfig.tiny()), tmp_path / "nowhere.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightLoadError, match="cannot read"):
        load_separation_strict(HTDemucs(SeparationConfig.tiny()), junk)


def test_published_weights_do_not_load_into_the_tiny_shape(tmp_path):
    path = ensure_tiny_isolation(tmp_path)
    with pytest.raises(WeightLoadError, match="shape"):
        VoiceIsolator.from_file(path)  # the published configuration is the default


def test_isolator_takes_any_rate_and_channel_count(tmp_path):
    iso = VoiceIsolator.from_file(ensure_tiny_isolation(tmp_path), cfg=SeparationConfig.tiny())
    mono16k = isolation_test_signal(16000, 16000)[0].numpy()
    out = iso.vocals(mono16k, 16000)
    assert out.dtype == np.float32 and out.shape == (2, 44100) and np.isfinite(out).all()
    assert np.array_equal(out, iso.vocals(np.stack([mono16k, mono16k]), 16000))  # mono is duplicated to stereo
    assert np.array_equal(out, iso.vocals(mono16k[None], 16000))
    seen = []
    four = np.tile(isolation_test_signal(44100).numpy(), (2, 1))
    out4 = iso.vocals(four, 44100, on_progress=seen.append)
    assert out4.shape == (2, 44100) and seen and seen[-1] == 1.0
    assert np.allclose(out4, iso.vocals(four[:2], 44100), atol=1e-6)  # channels past two are dropped


@settings(max_examples=8, deadline=None)
@given(length=st.integers(min_value=1, max_value=3 * 44100), silent=st.booleans())
def test_any_length_comes_back_whole_and_finite(tiny, length, silent):
    track = torch.zeros(2, length) if silent else isolation_test_signal(length)
    stems = separate(tiny, track, batch=2)
    assert stems.shape == (4, 2, length) and torch.isfinite(stems).all()


def test_one_source_is_that_row_of_all_sources(tiny):
    track = isolation_test_signal(int(1.3 * tiny.cfg.samplerate))
    every = separate(tiny, track, batch=2)
    vocals = separate(tiny, track, batch=2, sources=("vocals",))
    assert vocals.shape == (1, 2, track.shape[-1])
    assert torch.allclose(vocals[0], every[tiny.cfg.sources.index("vocals")], atol=1e-6)


def test_the_published_size_matches_the_reference_implementation(reference):
    """The whole published configuration (seeded weights, one 7.8 s segment): what the key manifest cannot
    show, e.g. the 2-D positions over 8 x 336 tokens, the 512-wide attention, the decoders' residual branches."""
    cfg = SeparationConfig.published()
    model = HTDemucs(cfg).eval()
    model.load_state_dict(randomise(model, TINY_ISOLATION_SEED), strict=True)
    with torch.no_grad():
        out = model(isolation_test_signal(cfg.segment_samples)[None])[0, cfg.sources.index("vocals"), 0, ::16]
    ref = reference["full_forward_vocals_left_every_16th"]
    assert out.shape == ref.shape and ref.abs().max() > 0.05
    assert torch.allclose(out, ref, atol=2e-3 * ref.abs().max().item(), rtol=2e-3)
