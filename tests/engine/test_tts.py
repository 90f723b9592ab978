"""Kokoro TTS: the tiny instance, written in the published formats, read by the production loader."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.engine.errors import TtsInputError, WeightLoadError
from testkit.tiny import TINY_VOICES, ensure_tiny_kokoro
from worker.engine.models.tts import KOKORO_MODEL_FILE, TTS_SAMPLE_RATE, KokoroTTS, split_dialogue

# The published vocoder turns each predicted duration frame into 300 samples at 24 kHz
# (upsample rates 10 x 6, iSTFT hop 5), and the duration head predicts 1..max_dur frames per token.
SAMPLES_PER_FRAME = 300


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return ensure_tiny_kokoro(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tts(folder) -> KokoroTTS:
    return KokoroTTS.from_folder(folder, device="cpu")


def test_tiny_folder_has_the_published_layout(folder):
    assert (folder / "config.json").is_file() and (folder / KOKORO_MODEL_FILE).is_file()
    ckpt = torch.load(folder / KOKORO_MODEL_FILE, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"bert", "bert_encoder", "predictor", "text_encoder", "decoder"}
    assert all(k.startswith("module.") for sd in ckpt.values() for k in sd)
    pack = torch.load(folder / "voices" / f"{TINY_VOICES[0]}.pt", weights_only=True)
    assert tuple(pack.shape) == (510, 1, 256)


def test_second_call_reuses_the_folder(folder):
    stamp = (folder / ".complete").stat().st_mtime_ns
    assert ensure_tiny_kokoro(folder.parent) == folder
    assert (folder / ".complete").stat().st_mtime_ns == stamp


def test_loader_reads_every_weight_of_the_file(tts, folder):
    ckpt = torch.load(folder / KOKORO_MODEL_FILE, map_location="cpu", weights_only=True)
    for comp, sd in ckpt.items():
        live = getattr(tts.model, comp).state_dict()
        for key, value in sd.items():
            assert torch.equal(live[key.removeprefix("module.")].cpu(), value), (comp, key)
    assert tts.voices() == sorted(TINY_VOICES)


def test_synthesis_is_finite_repeatable_and_of_plausible_length(tts):
    text = "Hello there, how are you today?"
    tokens = sum(len(c.ids) for c in tts.chunks(text, "af_heart"))
    assert 10 < tokens < 60
    wave = tts.synthesize(text, "af_heart")
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.all(np.isfinite(wave)) and wave.std() > 0
    frames = len(wave) / SAMPLES_PER_FRAME
    assert len(wave) % SAMPLES_PER_FRAME == 0
    assert tokens + 2 <= frames <= (tokens + 2) * tts.config["max_dur"]
    assert np.array_equal(wave, tts.synthesize(text, "af_heart"))
    other = tts.synthesize(text, TINY_VOICES[1])
    assert not np.array_equal(wave, other[: len(wave)])


_TEXT = "Good morning to you. How was the trip over here? We waited a while."


@pytest.fixture(scope="module")
def short_chunks(folder) -> KokoroTTS:
    """Its own instance with 20-token chunks, so a short text (cheap on the CPU) spans several."""
    tts = KokoroTTS.from_folder(folder, device="cpu")
    tts.max_tokens = 20
    return tts


@pytest.fixture(scope="module")
def full_speech(short_chunks):
    return {seed: short_chunks.speak(_TEXT, "af_heart", seed=seed) for seed in (0, 2**32 - 1)}


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_s=st.one_of(st.just(0.0), st.floats(0.01, 12.0)), seed=st.sampled_from([0, 2**32 - 1]))
def test_a_speech_budget_stops_the_vocoder_and_counts_what_it_skipped(short_chunks, full_speech, max_s, seed):
    """Speech past a video's end is cut anyway; the vocoder stops at the first chunk boundary past `max_s`. What it
    says is the start of the full speech, sample for sample, and no phoneme is lost from the count."""
    tts, full = short_chunks, full_speech[seed]
    part = tts.speak(_TEXT, "af_heart", seed=seed, max_s=max_s)
    chunks = [len(c.ids) for c in tts.chunks(_TEXT, "af_heart")]
    assert len(chunks) > 2 and full.tokens_left == 0 and full.tokens_spoken == sum(chunks)
    assert part.tokens_spoken + part.tokens_left == sum(chunks)
    assert np.array_equal(part.wave, full.wave[: len(part.wave)])
    spoken_s = len(part.wave) / TTS_SAMPLE_RATE
    if max_s == 0:
        assert part.wave.size == 0 and part.tokens_spoken == 0
    elif part.tokens_left:
        assert spoken_s >= max_s  # stopped only once the budget was spoken, at a chunk boundary, within one chunk
        assert part.tokens_spoken in np.cumsum(chunks).tolist()
        one_chunk = (max(chunks) + 2) * tts.config["max_dur"] * SAMPLES_PER_FRAME / TTS_SAMPLE_RATE
        assert spoken_s - max_s < one_chunk
    else:
        assert len(part.wave) == len(full.wave)


def test_16k_output_is_the_resampled_24k_speech(tts):
    wave24 = tts.synthesize("Good morning.", "af_heart", seed=3)
    wave16 = tts.synthesize_16k("Good morning.", "af_heart", seed=3)
    assert wave16.dtype == np.float32
    assert len(wave16) == pytest.approx(len(wave24) * 16000 / TTS_SAMPLE_RATE, abs=1)


def test_long_text_is_cut_into_chunks_the_model_accepts(tts):
    text = " ".join(["This sentence is repeated to pass the limit of one chunk."] * 20)
    chunks = tts.chunks(text, "af_heart")
    assert len(chunks) > 1 and all(0 < len(c.ids) <= tts.max_tokens for c in chunks)


def test_symbols_outside_the_vocabulary_are_dropped(tts):
    ps = tts.phonemize("Hi 🙂 there")
    assert ps and all(ch in tts.vocab for ch in ps)


def test_unknown_voice_and_empty_text_are_input_errors(tts):
    with pytest.raises(TtsInputError, match="unknown voice 'af_nobody'") as info:
        tts.synthesize("hello", "af_nobody")
    assert "af_heart" in (info.value.hint or "")
    with pytest.raises(TtsInputError, match="invalid voice name"):
        tts.synthesize("hello", "../af_heart")
    with pytest.raises(TtsInputError, match="empty"):
        tts.synthesize("   ", "af_heart")
    with pytest.raises(TtsInputError, match="nothing to pronounce"):
        tts.synthesize("... ?!", "af_heart")


def test_voice_of_a_language_without_espeak_front_end_is_refused(tts, folder, tmp_path):
    shutil.copy(folder / "voices" / "af_heart.pt", tts.voices_dir / "zf_tiny.pt")
    try:
        with pytest.raises(TtsInputError, match="no espeak-ng phonemizer"):
            tts.synthesize("hello", "zf_tiny")
    finally:
        (tts.voices_dir / "zf_tiny.pt").unlink()


def test_a_checkpoint_missing_a_key_names_it(folder, tmp_path):
    broken = tmp_path / "kokoro"
    shutil.copytree(folder, broken)
    ckpt = torch.load(broken / KOKORO_MODEL_FILE, map_location="cpu", weights_only=True)
    del ckpt["decoder"]["module.generator.conv_post.bias"]
    torch.save(ckpt, broken / KOKORO_MODEL_FILE)
    with pytest.raises(WeightLoadError, match=r"decoder\.generator\.conv_post\.bias.*missing"):
        KokoroTTS.from_folder(broken)
    del ckpt["bert"]
    torch.save(ckpt, broken / KOKORO_MODEL_FILE)
    with pytest.raises(WeightLoadError, match="bert"):
        KokoroTTS.from_folder(broken)


def test_missing_folder_is_a_weight_error(tmp_path):
    with pytest.raises(WeightLoadError, match="config.json"):
        KokoroTTS.from_folder(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "text, turns",
    [
        ("Just one speaker.", [(1, "Just one speaker.")]),
        ("(s1) Hi there. (s2) Hello! (S1) Bye.", [(1, "Hi there."), (2, "Hello!"), (1, "Bye.")]),
        ("Intro (s2) reply (s2)  more\n words (s1)", [(1, "Intro"), (2, "reply more words")]),
        ("(s2)Only the second", [(2, "Only the second")]),
        ("(s1) (s2)", []),
    ],
)
def test_split_dialogue(text, turns):
    assert split_dialogue(text) == turns
