"""The job's audio: per-speaker 16 kHz tracks for the audio encoder and the soundtrack for the MP4.

From uploaded files (decoded, resampled, loudness-normalised and, for two speakers, mixed as the job's
audio_type says; with audio_isolation each file's speech is first separated from music and noise, and that
voice becomes the speaker's track while the soundtrack is the original mix or the voice, as audio_mux says)
or from Kokoro speech (turns laid out one after the other, each track silent while the other
speaker talks), then cut to the length the video will have. The decoding and mixing primitives are the
engine's (`worker.engine.prepare_audio`, `merge_speakers`, `loudness_normalize`: numpy/librosa, no torch).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

import worker.engine as engine
from contract.choices import AUDIO_SAMPLE_RATE, VIDEO_FPS
from contract.errors import ErrorCode, JobError
from contract.job import JobInput
from worker.progress import ProgressReporter
from worker.resolve import ResolvedJobConfig

__all__ = ["DEFAULT_VOICES", "uploaded_tracks", "isolated_voice", "synthesized_tracks", "video_seconds", "cut_to_video"]

# Kokoro voice packs used when a tts job names none (speaker 1, speaker 2).
DEFAULT_VOICES = ("af_heart", "am_michael")


def uploaded_tracks(
    resolved: ResolvedJobConfig, media: dict[str, Path], isolator: Any = None, progress: ProgressReporter | None = None
) -> tuple[tuple[np.ndarray, ...], np.ndarray, float]:
    """Per-speaker 16 kHz tracks for the embedder and the soundtrack for the MP4, both cut to the
    length the video will have (max_duration_s; one chunk in clip mode), and the seconds cut.

    With resolved.audio_isolation, `isolator` (the engine's VoiceIsolator) separates each speaker's file and
    the isolated voices are the tracks; the soundtrack is the uploaded mix (audio_mux original) or the voices."""
    names = ["audio.person1"] + (["audio.person2"] if "audio.person2" in media else [])
    originals = [_decoded(name, engine.prepare_audio, media[name]) for name in names]
    voices = None
    if resolved.audio_isolation:
        voices = [_decoded(name, isolated_voice, isolator, media[name], len(orig), progress, f"{i + 1}/{len(names)}")
                  for i, (name, orig) in enumerate(zip(names, originals))]
    tracks, soundtrack = _lay_out(originals, resolved)
    if voices is not None:
        tracks, voice_mix = _lay_out(voices, resolved)
        if resolved.audio_mux == "voice":
            soundtrack = voice_mix
    return cut_to_video(tracks, soundtrack, resolved, field=names[0] if len(names) == 1 else "audio")


def _decoded(name: str, fn: Any, *args: Any) -> np.ndarray:
    """`fn(*args)` for the file of job field `name`; a decode failure becomes E_AUDIO_EMBEDDING naming that field,
    in words without the worker's own path to its copy of the file (that says nothing to the sender)."""
    try:
        return fn(*args)
    except engine.AudioDecodeError as exc:
        what = str(exc)
        if exc.path:
            what = what.removesuffix(f" ({exc.path})").replace(exc.path, "the file")
        raise JobError(ErrorCode.E_AUDIO_EMBEDDING, f"{name}: {what}",
                       hint=f"{name}: send speech as WAV, MP3, FLAC or M4A that plays in an ordinary player.",
                       details={"field": name}) from exc


def _lay_out(per_speaker: list[np.ndarray], resolved: ResolvedJobConfig) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    if len(per_speaker) == 1:
        return (per_speaker[0],), per_speaker[0]
    merged = engine.merge_speakers(per_speaker[0], per_speaker[1], resolved.audio_type or "add")
    return (merged.person1, merged.person2), merged.soundtrack


def isolated_voice(isolator: Any, path: Path, length: int, progress: ProgressReporter | None = None,
                   label: str = "") -> np.ndarray:
    """One file's speech without its music/noise, as the embedder takes it: the vocals stem (44.1 kHz stereo)
    to mono 16 kHz, loudness-normalised like any uploaded speech, `length` samples (the original's 16 kHz
    length, which the two resampling paths can miss by a sample)."""
    data, sr = engine.decode_audio(path)
    message = f"isolating voice {label}".strip()
    if progress is not None:
        progress.update(0.0, message)
    on_progress = (lambda f: progress.update(f, message)) if progress is not None else None
    vocals = isolator.vocals(data, sr, on_progress=on_progress)
    voice = engine.mono_16k(vocals, isolator.sample_rate)
    voice = np.pad(voice, (0, max(0, length - len(voice))))[:length]
    return engine.loudness_normalize(voice)


def synthesized_tracks(
    job: JobInput, resolved: ResolvedJobConfig, tts: Any, progress: ProgressReporter
) -> tuple[tuple[np.ndarray, ...], np.ndarray, float]:
    """Kokoro speech laid out like uploaded audio: one track per speaker, turns one after the
    other (as `add`), each track silent while the other speaker talks. Each speaker's speech is
    loudness-normalised as a whole, as an uploaded file of that speaker would be. `tts` is the
    engine's Kokoro model (built on first use by the job's engine holder). Also returns the
    estimated seconds of speech never synthesised because the video ends before them."""
    spec = job.tts
    assert spec is not None
    voices = {1: spec.voice or DEFAULT_VOICES[0], 2: spec.voice2 or DEFAULT_VOICES[1]}
    turns = engine.split_dialogue(spec.text)
    if not turns:
        raise JobError(ErrorCode.E_INPUT_VALIDATION, "tts.text has no words to speak", hint="put the words in tts.text")
    # Speech past the video's length is cut anyway: the vocoder stops there (every turn is still checked), and the
    # words it skipped are counted, at the pace of the words it spoke, into the seconds the result says were cut.
    budget_s = video_seconds(resolved)
    speech: list[tuple[int, np.ndarray]] = []
    spoken_s, tokens_spoken, tokens_left = 0.0, 0, 0
    for i, (who, text) in enumerate(turns):
        said = tts.speak_16k(text, voices[who], seed=(resolved.seed + i) % 2**32, max_s=max(0.0, budget_s - spoken_s))
        speech.append((who, said.wave))
        spoken_s += len(said.wave) / AUDIO_SAMPLE_RATE
        tokens_spoken, tokens_left = tokens_spoken + said.tokens_spoken, tokens_left + said.tokens_left
        progress.update((i + 1) / len(turns), f"speech {i + 1}/{len(turns)} (speaker {who})")
    unspoken_s = tokens_left * spoken_s / tokens_spoken if tokens_spoken else 0.0
    normed_turns: dict[int, list[np.ndarray]] = {}
    for who in (1, 2):
        mine = [w for s, w in speech if s == who]
        if not mine:
            continue
        normed = engine.loudness_normalize(np.concatenate(mine))
        bounds = np.cumsum([len(w) for w in mine])[:-1]
        normed_turns[who] = list(np.split(normed, bounds))
    people = 2 if job.speakers == 2 else 1
    lanes: dict[int, list[np.ndarray]] = {1: [], 2: []}
    for who, wave in speech:
        seg = normed_turns[who].pop(0)
        for lane in lanes:
            lanes[lane].append(seg if lane == who else np.zeros(len(seg), dtype=np.float32))
    tracks = tuple(np.concatenate(lanes[p]).astype(np.float32, copy=False) for p in range(1, people + 1))
    soundtrack = tracks[0] if people == 1 else (tracks[0] + tracks[1]).astype(np.float32, copy=False)
    return tracks, soundtrack, unspoken_s


def video_seconds(resolved: ResolvedJobConfig) -> float:
    """The longest video this job makes: max_duration_s, and one chunk in clip mode."""
    if resolved.mode == "clip":
        return min(resolved.max_duration_s, resolved.frame_num / VIDEO_FPS)
    return resolved.max_duration_s


def cut_to_video(
    tracks: tuple[np.ndarray, ...], soundtrack: np.ndarray, resolved: ResolvedJobConfig, field: str = "tts.text"
) -> tuple[tuple[np.ndarray, ...], np.ndarray, float]:
    """Both cut to the length the video will have (max_duration_s; one chunk in clip mode), plus the
    seconds of speech cut off, which the result reports (`truncated_s`) so a cut is never silent.
    Audio too short for a video is E_AUDIO_EMBEDDING naming `field`, the job field it came from."""
    limit = int(math.floor(video_seconds(resolved) * AUDIO_SAMPLE_RATE))
    dropped_s = 0.0
    if len(soundtrack) > limit:
        dropped_s = (len(soundtrack) - limit) / AUDIO_SAMPLE_RATE
        soundtrack = soundtrack[:limit]
        tracks = tuple(t[:limit] for t in tracks)
    if len(soundtrack) < AUDIO_SAMPLE_RATE // VIDEO_FPS * 2:
        raise JobError(
            ErrorCode.E_AUDIO_EMBEDDING, f"{field}: the audio is too short to drive a video (under 80 ms)",
            hint=f"{field}: send at least a fraction of a second of speech", details={"field": field},
        )
    return tracks, soundtrack, dropped_s
