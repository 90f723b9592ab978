"""Exception types raised by the inference engine.

The engine never builds user-facing job errors itself; the worker catches these types and maps
them to `contract.errors.ErrorCode` values. Keeping one root (`EngineError`) lets the worker tell
engine failures it understands from genuine bugs.
"""
from __future__ import annotations


class EngineError(Exception):
    """Root of every failure the engine raises on purpose."""


class AudioDecodeError(EngineError):
    """An audio input could not be turned into a usable 16 kHz waveform (corrupt, empty, too short)."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{message} ({path})" if path else message)


class WeightLoadError(EngineError):
    """A checkpoint tensor could not be loaded; names the file and the key so an operator can act."""

    def __init__(self, file: str, key: str | None, reason: str) -> None:
        self.file = str(file)
        self.key = key
        self.reason = reason
        where = f"key {key!r} of {self.file}" if key is not None else self.file
        super().__init__(f"cannot load weights: {where}: {reason}")


class EngineOOMError(EngineError):
    """The accelerator ran out of memory; raised so the worker can suggest a smaller job."""


class GenerationCancelled(EngineError):
    """The job was cancelled between steps; not a failure of the engine."""


class RankFailedError(EngineError):
    """A multi-GPU worker's follower rank died, hung past the timeout or failed (worker/engine/parallel/):
    the job cannot finish on this process group, which is restarted before the next job. `refresh_worker`:
    the restart itself failed, so this worker should be replaced."""

    def __init__(self, message: str, refresh_worker: bool = False) -> None:
        self.refresh_worker = refresh_worker
        super().__init__(message)


class TtsInputError(EngineError):
    """A text-to-speech request the voice model cannot serve (no pronounceable text, unknown voice,
    a language without a phonemizer). The caller's input is at fault, not the engine."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message)


class LoraFitError(EngineError):
    """A job's own LoRA (job field `loras[index]`) does not fit the DiT: a key for a parameter the model lacks,
    a tensor of the wrong shape or dtype, non-finite values. The caller's file is at fault, not the engine;
    raised before any weight changes."""

    def __init__(self, index: int, file: str, key: str | None, reason: str) -> None:
        self.index = index
        self.file = str(file)
        self.key = key
        self.reason = reason
        where = f"key {key!r}: " if key is not None else ""
        super().__init__(f"loras[{index}]: {where}{reason}")
