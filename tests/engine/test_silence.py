"""Silence handling: detection (property tests, numpy only) and its effect on the tiny model's inputs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from worker.engine.runtime import Engine, EngineRequest
from worker.engine.sampling.generation import GenerationInputs, GenerationSettings, generate
from worker.engine.sampling.silence import chunk_audio_scale, frame_levels_db, silent_frames, trailing_silent_frames
from testkit.tiny import ensure_tiny_checkpoint

HOP = 640  # samples per 25 fps frame at 16 kHz


def _track(levels: list[bool]) -> np.ndarray:
    """One frame of a loud tone (True) or of near-silence (False) per entry."""
    t = np.arange(HOP) / 16000
    loud = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    quiet = np.full(HOP, 1e-4, dtype=np.float32)  # -80 dBFS
    return np.concatenate([loud if x else quiet for x in levels]) if levels else np.zeros(0, np.float32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60), st.floats(0.04, 1.0))
def test_silent_frames_are_exactly_the_long_enough_quiet_runs(loud, min_s):
    got = silent_frames(_track(loud), len(loud), -45.0, min_s)
    min_run = int(np.ceil(min_s * 25 - 1e-9))
    want = np.zeros(len(loud), bool)
    i = 0
    while i < len(loud):  # a plain run-length walk, the reference for the vectorised code
        j = i
        while j < len(loud) and loud[j] == loud[i]:
            j += 1
        if not loud[i] and j - i >= max(1, min_run):
            want[i:j] = True
        i = j
    assert got.dtype == bool and np.array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.floats(-100, 0), st.integers(0, 3000))
def test_frames_past_the_audio_are_silent_and_levels_follow_the_threshold(n_frames, threshold, extra):
    audio = np.full(extra, 0.5, np.float32)
    levels = frame_levels_db(audio, n_frames)
    assert levels.shape == (n_frames,) and np.all(levels <= 0.0 + 1e-9)
    covered = extra // HOP  # whole frames of audio at -6 dBFS
    mask = silent_frames(audio, n_frames, threshold, 0.04)
    assert not mask[: min(covered, n_frames)].any() or threshold > -6.03
    assert mask[-(n_frames - min(n_frames, -(-extra // HOP))) or n_frames :].all()


@given(st.lists(st.booleans(), max_size=50))
def test_trailing_silent_frames_counts_the_silent_tail(mask):
    n = trailing_silent_frames(np.array(mask, bool))
    assert all(mask[len(mask) - n :]) and (n == len(mask) or not mask[len(mask) - n - 1])


@given(st.lists(st.booleans(), min_size=1, max_size=100), st.integers(0, 100), st.integers(1, 81),
       st.floats(0, 20), st.floats(0, 20))
def test_chunk_scale_moves_toward_the_silence_scale_by_the_silent_share(mask, start, length, scale, quiet):
    m = np.array(mask, bool)
    got = chunk_audio_scale(m, start, length, scale, quiet)
    window = m[start : start + length]
    share = window.mean() if window.size else 0.0
    assert got == pytest.approx(scale + (quiet - scale) * share)
    assert chunk_audio_scale(None, start, length, scale, quiet) == scale


# ---------------------------------------------------------------- on the tiny model

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine.load(ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny"))


# 0.6 s speech, 0.8 s pause, 0.6 s speech, 0.1 s dip, 0.4 s speech (frames at 25 fps)
PATTERN = [True] * 15 + [False] * 20 + [True] * 15 + [False] * 3 + [True] * 10


def test_silent_frames_get_the_embedding_of_true_silence_and_only_they(engine):
    track = _track(PATTERN)
    (emb,) = engine.embed_audio((track,))
    s = GenerationSettings(silence_handling=True)
    (out,), every = engine.silence_audio((track,), (emb,), s)
    quiet = engine.audio_embedder.embed(np.zeros_like(track), seq_len=emb.shape[0])
    mask = np.array([not x for x in PATTERN])
    mask[50:53] = False  # the 0.12 s dip is shorter than min_s 0.3: a gap between words
    assert np.array_equal(every, mask)
    rows = torch.from_numpy(mask)
    torch.testing.assert_close(out[rows], quiet[rows], rtol=0, atol=0)
    torch.testing.assert_close(out[~rows], emb[~rows], rtol=0, atol=0)
    assert not torch.equal(out[rows], emb[rows])  # the quiet room tone's own embedding is replaced
    # a lower threshold (-90 dBFS) finds no silence in the -80 dBFS stretch: nothing changes
    (same,), none = engine.silence_audio((track,), (emb,), dataclasses.replace(s, silence_threshold_db=-90.0))
    assert not none.any() and torch.equal(same, emb)


def test_two_speakers_rest_together_only_where_both_are_silent(engine):
    a, b = _track(PATTERN), _track([True] * 25 + [False] * 38)
    embs = engine.embed_audio((a, b))
    _, every = engine.silence_audio((a, b), embs, GenerationSettings(silence_handling=True))
    assert np.array_equal(np.flatnonzero(every), np.arange(25, 35))


def _inputs(engine, audio, silent):
    return GenerationInputs(cond=Image.new("RGB", (120, 160), (200, 120, 90)), audio=audio,
                            context=engine.encode_text("a person talks"), context_null=engine.encode_text("blurry"),
                            silent=silent)


def test_each_chunk_uses_its_own_audio_guidance_by_its_silent_share(engine):
    (emb,) = engine.embed_audio((_track(PATTERN),))
    silent = np.zeros(emb.shape[0], bool)
    silent[17:34] = True  # exactly chunk 1's frames (frame_num 17, motion 5: chunk starts 0, 12, 24, ...)
    s = GenerationSettings(sample_steps=2, frame_num=17, motion_frame=5, seed=3, text_guide_scale=1.0,
                           audio_guide_scale=4.0, silence_audio_guide_scale=1.0,
                           bucket=engine.bucket_table("infinitetalk-480"))
    traced: dict[str, torch.Tensor] = {}
    trace = lambda name, t: traced.__setitem__(name, t.clone())  # noqa: E731
    with torch.inference_mode():
        handled = list(generate(engine.dit, engine.vae, engine.encode_clip, _inputs(engine, (emb,), silent), s,
                                trace=trace))
        scales = [float(traced[f"chunk{i}.audio_guide_scale"]) for i in range(len(handled))]
        plain_trace: dict[str, torch.Tensor] = {}
        plain = list(generate(engine.dit, engine.vae, engine.encode_clip, _inputs(engine, (emb,), None), s,
                              trace=lambda n, t: plain_trace.__setitem__(n, t.clone())))
    starts = [0, 12, 24, 36, 48]
    want = [4.0 + (1.0 - 4.0) * silent[st_ : st_ + 17].mean() for st_ in starts[: len(scales)]]
    assert scales == pytest.approx(want) and min(scales) < 4.0 and scales[0] == 4.0
    assert not any(k.endswith("audio_guide_scale") for k in plain_trace)  # off: the reference's trace
    # chunk 0 has no silent frames: the same latent; a chunk with silence is sampled differently
    torch.testing.assert_close(traced["chunk0.final_latent"], plain_trace["chunk0.final_latent"], rtol=0, atol=0)
    assert not torch.equal(traced["chunk1.final_latent"], plain_trace["chunk1.final_latent"])
    assert len(handled) == len(plain)


def test_silence_handling_on_loud_speech_changes_nothing(engine):
    t = np.arange(16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    base = dict(sample_steps=2, frame_num=17, motion_frame=5, seed=3)
    req = EngineRequest(cond=Image.new("RGB", (120, 160), (200, 120, 90)), audio_tracks=(audio,),
                        prompt="a person talks", negative_prompt="blurry", settings=GenerationSettings(**base))
    off = torch.cat([c.frames for c in engine.generate(req)], dim=1)
    on_req = dataclasses.replace(req, settings=GenerationSettings(**base, silence_handling=True))
    on = torch.cat([c.frames for c in engine.generate(on_req)], dim=1)
    torch.testing.assert_close(on, off, rtol=0, atol=0)
