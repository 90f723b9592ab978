"""The engine's front door: what the worker (or any caller) needs to render a video.

Importing `worker.engine` does not import torch: the settings and the errors are plain Python, and
the heavy parts (`Engine`, the multi-GPU `ParallelEngine`/`RankGroup`, `KokoroTTS`, the checkpoint
layout) load on first attribute access, i.e. when the engine is built. Inside, the engine is grouped
by role: `models/` (the networks), `formats/` (weight files: layout, loaders, bundle, LoRA, fp8),
`sampling/` (the generation loop), `kernels/` (attention, compile, offload), `parallel/` (several GPUs).
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from worker.engine.errors import (
    AudioDecodeError,
    EngineError,
    EngineOOMError,
    GenerationCancelled,
    LoraFitError,
    RankFailedError,
    TtsInputError,
    WeightLoadError,
)
from worker.engine.settings import EngineOptions, EngineRequest, GenerationSettings, GuidanceConfig

# name -> module that defines it; imported on first use (these pull in torch, except where noted)
_LAZY = {
    "Engine": "worker.engine.runtime",
    "ChunkResult": "worker.engine.sampling.generation",
    "StepInfo": "worker.engine.sampling.generation",
    "ResumeState": "worker.engine.sampling.generation",
    "ParallelEngine": "worker.engine.parallel.leader",
    "RankGroup": "worker.engine.parallel.leader",
    "KokoroTTS": "worker.engine.models.tts",
    "split_dialogue": "worker.engine.models.tts",
    "VoiceIsolator": "worker.engine.models.separation",  # audio_isolation's htdemucs
    "decode_audio": "worker.engine.audio_io",  # numpy/soundfile/PyAV only
    "mono_16k": "worker.engine.audio_io",  # numpy/librosa only
    "CheckpointLayout": "worker.engine.formats.layout",  # torch-free
    "warm_start": "worker.engine.formats.prefetch",  # torch-free
    "prepare_audio": "worker.engine.audio_io",  # numpy/librosa only
    "merge_speakers": "worker.engine.audio_io",  # numpy only
    "loudness_normalize": "worker.engine.audio_io",  # numpy only
    "fit_peak": "worker.engine.audio_io",  # numpy only
    "silent_frames": "worker.engine.sampling.silence",  # numpy only
    "trailing_silent_frames": "worker.engine.sampling.silence",  # numpy only
}

__all__ = [
    "AudioDecodeError", "EngineError", "EngineOOMError", "GenerationCancelled", "LoraFitError", "RankFailedError",
    "TtsInputError",
    "WeightLoadError", "EngineOptions", "EngineRequest", "GenerationSettings", "GuidanceConfig", *_LAZY,
]

if TYPE_CHECKING:
    from worker.engine.audio_io import fit_peak, loudness_normalize, merge_speakers, prepare_audio
    from worker.engine.formats.layout import CheckpointLayout
    from worker.engine.formats.prefetch import warm_start
    from worker.engine.audio_io import decode_audio, mono_16k
    from worker.engine.models.separation import VoiceIsolator
    from worker.engine.models.tts import KokoroTTS, split_dialogue
    from worker.engine.parallel.leader import ParallelEngine, RankGroup
    from worker.engine.sampling.silence import silent_frames, trailing_silent_frames
    from worker.engine.runtime import Engine
    from worker.engine.sampling.generation import ChunkResult, ResumeState, StepInfo


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'worker.engine' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
