"""Silent stretches of a speech track, per 25 fps video frame (numpy only; the engine applies them).

Why: wav2vec2 features of near-silence (breath, room noise) still drive the mouth, so faces babble
through pauses. A frame is silent when the RMS level of its 40 ms window is below `threshold_db`
(dBFS: 0 dB is a full-scale square wave, -45 dBFS is quiet room tone) and it belongs to a run of
such frames lasting at least `min_s` seconds (shorter dips are gaps between words, not pauses).
"""
from __future__ import annotations

import numpy as np

from contract.choices import AUDIO_SAMPLE_RATE as SAMPLE_RATE
from contract.choices import VIDEO_FPS


def frame_levels_db(audio_16k: np.ndarray, n_frames: int, sample_rate: int = SAMPLE_RATE,
                    fps: int = VIDEO_FPS) -> np.ndarray:
    """RMS level in dBFS of each video frame's window (frames past the audio's end count as silent)."""
    x = np.asarray(audio_16k, dtype=np.float64).reshape(-1)
    hop = sample_rate // fps
    padded = np.zeros(n_frames * hop)
    n = min(x.shape[0], padded.shape[0])
    padded[:n] = x[:n]
    rms = np.sqrt(np.mean(padded.reshape(n_frames, hop) ** 2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def silent_frames(audio_16k: np.ndarray, n_frames: int, threshold_db: float, min_s: float,
                  sample_rate: int = SAMPLE_RATE, fps: int = VIDEO_FPS) -> np.ndarray:
    """Bool [n_frames]: frames inside a run of below-threshold frames at least `min_s` long."""
    quiet = frame_levels_db(audio_16k, n_frames, sample_rate, fps) < threshold_db
    min_run = max(1, int(np.ceil(min_s * fps - 1e-9)))
    out = np.zeros(n_frames, dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        if stop - start >= min_run:
            out[start:stop] = True
    return out


def trailing_silent_frames(silent: np.ndarray) -> int:
    """How many frames at the end are silent (what a trailing-silence trim removes)."""
    s = np.asarray(silent, dtype=bool)
    loud = np.flatnonzero(~s)
    return int(s.shape[0] if loud.size == 0 else s.shape[0] - 1 - loud[-1])


def chunk_audio_scale(silent: np.ndarray | None, start: int, length: int, scale: float, silence_scale: float) -> float:
    """A chunk's audio guidance: moved from `scale` toward `silence_scale` by its share of silent frames
    (guidance is one number per step over the whole chunk, so a mostly-silent chunk mostly rests)."""
    if silent is None:
        return scale
    window = np.asarray(silent[start : start + length], dtype=bool)
    share = float(window.mean()) if window.size else 0.0
    return scale + (silence_scale - scale) * share
