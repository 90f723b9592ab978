"""Trailing-silence trim (job field trim_trailing_silence, issue 19): the video ends when the speech ends.

The per-frame silence rule is the engine's (worker.engine.sampling.silence, numpy only, reached through the
facade): a frame is silent when its 40 ms window is below silence_threshold_db within a run of at least
silence_min_s. The frames at the end where every speaker is silent are cut from the tracks and the soundtrack
alike, keeping TRIM_TAIL_S of them, so the video (one frame per 640 samples) and the muxed audio shrink by the
same whole frames. It runs after the mode/max_duration cut, whose seconds stay `truncated_s`; the seconds
trimmed here are the result's `trimmed_s`. Audio that is silent throughout is left whole (no speech to end at).
"""
from __future__ import annotations

import numpy as np

import worker.engine as engine
from contract.choices import AUDIO_SAMPLE_RATE, TRIM_TAIL_S, VIDEO_FPS

HOP = AUDIO_SAMPLE_RATE // VIDEO_FPS  # samples per video frame


def trailing_silence_frames(tracks: tuple[np.ndarray, ...], threshold_db: float, min_s: float) -> tuple[int, int]:
    """(video frames of the audio, frames at its end where every track is silent)."""
    n = min(len(t) for t in tracks) // HOP
    if n == 0:
        return 0, 0
    every = np.ones(n, dtype=bool)
    for t in tracks:
        every &= engine.silent_frames(t, n, threshold_db, min_s)
    return n, engine.trailing_silent_frames(every)


def trim_trailing_silence(
    tracks: tuple[np.ndarray, ...], soundtrack: np.ndarray, threshold_db: float, min_s: float,
) -> tuple[tuple[np.ndarray, ...], np.ndarray, float]:
    """Tracks and soundtrack without their trailing silence (a TRIM_TAIL_S tail kept), and the seconds cut."""
    n, silent = trailing_silence_frames(tracks, threshold_db, min_s)
    tail = round(TRIM_TAIL_S * VIDEO_FPS)
    if silent <= tail or silent >= n:
        return tracks, soundtrack, 0.0
    keep = (n - silent + tail) * HOP
    cut_s = (len(soundtrack) - keep) / AUDIO_SAMPLE_RATE
    return tuple(t[:keep] for t in tracks), soundtrack[:keep], cut_s
