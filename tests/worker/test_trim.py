"""Trailing-silence trim (worker/media/trim.py): the video and its soundtrack end TRIM_TAIL_S after the speech."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from hypothesis import given, settings, strategies as st

from contract.choices import AUDIO_SAMPLE_RATE as SR, TRIM_TAIL_S, VIDEO_FPS
from worker.media.trim import HOP, trim_trailing_silence
from tests.worker.test_job import MEDIA, make_ctx, run

TAIL = round(TRIM_TAIL_S * VIDEO_FPS)
MIN_RUN = 8  # frames in 0.3 s (silence_min_s's default) at 25 fps, rounded up


def tone(frames: int, hz: float = 220.0) -> np.ndarray:
    t = np.arange(frames * HOP) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 60), st.integers(0, 80), st.integers(0, HOP - 1))
def test_speech_then_silence_keeps_the_speech_and_the_tail(speech, quiet, ragged):
    track = np.concatenate([tone(speech), np.zeros(quiet * HOP + ragged, np.float32)])
    tracks, sound, cut_s = trim_trailing_silence((track,), track, -45.0, 0.3)
    if quiet >= MIN_RUN and quiet > TAIL:  # a pause long enough to count, longer than the tail
        assert len(sound) == len(tracks[0]) == (speech + TAIL) * HOP
        assert cut_s == pytest.approx((len(track) - (speech + TAIL) * HOP) / SR)
        assert np.array_equal(sound, track[: len(sound)])
    else:
        assert sound is track and cut_s == 0.0


def test_two_speakers_end_when_the_last_one_stops():
    a = np.concatenate([tone(20), np.zeros(60 * HOP, np.float32)])
    b = np.concatenate([np.zeros(20 * HOP, np.float32), tone(25, 330), np.zeros(35 * HOP, np.float32)])
    tracks, sound, cut_s = trim_trailing_silence((a, b), a + b, -45.0, 0.3)
    assert len(sound) == (45 + TAIL) * HOP and all(len(t) == len(sound) for t in tracks)
    assert cut_s == pytest.approx((80 - 45 - TAIL) * HOP / SR)


def test_silence_throughout_is_left_whole():
    quiet = np.zeros(50 * HOP, np.float32)
    assert trim_trailing_silence((quiet,), quiet, -45.0, 0.3)[2] == 0.0


def _audio_seconds(path: str) -> float:
    with av.open(path) as c:
        stream = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(stream))
        return samples / stream.rate


def test_a_job_with_trailing_silence_ends_when_the_speech_ends(tmp_path):
    ctx = make_ctx(tmp_path, tmp_path / "cache")
    (tmp_path / "in").mkdir()
    ctx = type(ctx)(cfg=ctx.cfg, engine=ctx.engine, extra_roots=(*ctx.extra_roots, tmp_path / "in"))
    wav = tmp_path / "in" / "tone_then_silence.wav"
    soundfile.write(wav, np.concatenate([tone(25), np.zeros(2 * SR, np.float32)]), SR)  # 1 s of tone, 2 s quiet
    job = {"image": str(MEDIA / "portrait.png"), "audio": str(wav), "sampler": "turbo", "seed": 3,
           "frame_num": 17, "motion_frame": 5}
    whole, _ = run(ctx, job, "whole")
    trimmed, _ = run(ctx, job | {"trim_trailing_silence": True}, "trimmed")
    assert whole["num_frames"] == 75 and whole["trimmed_s"] == 0.0  # 3 s at 25 fps
    assert trimmed["num_frames"] == 25 + TAIL  # the tone's frames and the tail
    assert trimmed["duration_s"] == pytest.approx((25 + TAIL) / VIDEO_FPS, abs=0.05)
    assert whole["duration_s"] == pytest.approx(3.0, abs=0.05)
    assert trimmed["trimmed_s"] == pytest.approx(3.0 - (25 + TAIL) / VIDEO_FPS, abs=1e-3)
    assert trimmed["truncated"] is False and trimmed["truncated_s"] == 0.0
    assert trimmed["config"]["trim_trailing_silence"] is True
    # the muxed soundtrack lost the same seconds as the frames (AAC pads by at most a frame of 1024 samples)
    assert _audio_seconds(trimmed["video_path"]) == pytest.approx(trimmed["num_frames"] / VIDEO_FPS, abs=0.07)
    assert _audio_seconds(whole["video_path"]) == pytest.approx(3.0, abs=0.07)
