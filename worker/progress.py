"""Job progress as dicts for Runpod's IN_PROGRESS status output.

Each stage owns a fixed band of the 0-100 scale, so a client's progress bar never jumps
backwards and stages can report fractions without knowing about each other. Sampling owns
most of the scale because it is most of the time. Percent is monotonic: a late or repeated
update never lowers it.

Runpod is not imported here; the handler passes a sink in (worker/progress_sender.py posts the
payloads in order), so this module stays importable anywhere.
"""
from __future__ import annotations

import threading
import time
from enum import Enum
from typing import Any, Callable, Mapping

__all__ = ["Stage", "STAGE_BANDS", "ProgressReporter"]


class Stage(str, Enum):
    VALIDATE = "validate"
    DOWNLOAD = "download"
    AUDIO = "audio"
    LOAD = "load"
    ENCODE = "encode"
    SAMPLING = "sampling"
    DECODE = "decode"
    MUX = "mux"
    UPLOAD = "upload"
    DONE = "done"

    def __str__(self) -> str:
        return self.value

    @property
    def band(self) -> tuple[float, float]:
        return STAGE_BANDS[self]


# (start, end) percent of each stage; contiguous and in pipeline order.
STAGE_BANDS: Mapping[Stage, tuple[float, float]] = {
    Stage.VALIDATE: (0.0, 2.0),
    Stage.DOWNLOAD: (2.0, 8.0),
    Stage.AUDIO: (8.0, 12.0),
    Stage.LOAD: (12.0, 20.0),
    Stage.ENCODE: (20.0, 25.0),
    Stage.SAMPLING: (25.0, 90.0),
    Stage.DECODE: (90.0, 94.0),
    Stage.MUX: (94.0, 97.0),
    Stage.UPLOAD: (97.0, 100.0),
    Stage.DONE: (100.0, 100.0),
}

_DEFAULT_MESSAGES = {
    Stage.VALIDATE: "validating input",
    Stage.DOWNLOAD: "downloading inputs",
    Stage.AUDIO: "preparing audio",
    Stage.LOAD: "loading model",
    Stage.ENCODE: "encoding audio, text and image",
    Stage.SAMPLING: "sampling",
    Stage.DECODE: "decoding video",
    Stage.MUX: "encoding MP4",
    Stage.UPLOAD: "uploading result",
    Stage.DONE: "done",
}

Sink = Callable[[dict[str, Any]], None]


class ProgressReporter:
    """Turns stage/fraction/chunk/step events into monotonic progress dicts for a sink.

    Emitted dict keys: stage, percent, message, chunk, chunks, step, steps, and eta_s once an
    estimate exists during sampling. `min_interval_s` throttles updates within a stage (stage
    changes and `done` always go out). A failing sink is recorded, never raised: progress must
    not fail a job.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        min_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._min_interval = float(min_interval_s)
        self._clock = clock
        self._percent = 0.0
        self._stage: Stage | None = None
        self._last_emit: float | None = None
        self._sampling_started: float | None = None
        self._chunk: int | None = None
        self._chunks: int | None = None
        self._step: int | None = None
        self._steps: int | None = None
        self.sink_errors = 0
        self.last: dict[str, Any] | None = None
        self._extra: dict[str, Any] = {}
        # The preview reports from the job's background thread while sampling reports from the job's.
        self._lock = threading.RLock()

    @property
    def percent(self) -> float:
        return self._percent

    @property
    def stage_now(self) -> Stage | None:
        return self._stage

    def stage(self, stage: Stage | str, message: str | None = None, fraction: float = 0.0) -> dict[str, Any] | None:
        """Enter a stage (or report within it)."""
        stage = Stage(stage)
        changed = stage != self._stage
        if changed:
            self._stage = stage
            self._chunk = self._chunks = self._step = self._steps = None
            if stage is Stage.SAMPLING:
                self._sampling_started = self._clock()
        return self._emit(stage, fraction, message, force=changed)

    def update(self, fraction: float, message: str | None = None) -> dict[str, Any] | None:
        """Report progress within the current stage (0..1)."""
        if self._stage is None:
            raise RuntimeError("call stage() before update()")
        return self._emit(self._stage, fraction, message, force=False)

    def sampling(
        self, chunk: int, chunks: int, step: int, steps: int, message: str | None = None
    ) -> dict[str, Any] | None:
        """Chunk `chunk` of `chunks` (1-based), `step` of `steps` steps done in it (0..steps)."""
        if chunks < 1 or steps < 1 or not 1 <= chunk <= chunks or not 0 <= step <= steps:
            raise ValueError(f"bad sampling position: chunk {chunk}/{chunks}, step {step}/{steps}")
        changed = self._stage is not Stage.SAMPLING
        if changed:
            self._stage = Stage.SAMPLING
            self._sampling_started = self._clock()
        self._chunk, self._chunks, self._step, self._steps = chunk, chunks, step, steps
        fraction = ((chunk - 1) * steps + step) / (chunks * steps)
        msg = message or f"chunk {chunk}/{chunks}, step {step}/{steps}"
        return self._emit(Stage.SAMPLING, fraction, msg, force=changed or (step == steps and chunk == chunks))

    def set_extra(self, key: str, value: Any) -> dict[str, Any] | None:
        """Carry `key: value` in this and every later payload (the preview's state); sent at once."""
        with self._lock:
            self._extra[key] = value
            if self._stage is None:
                return None
            return self._emit(self._stage, 0.0, self.last.get("message") if self.last else None, force=True)

    def done(self, message: str | None = None) -> dict[str, Any] | None:
        self._stage = Stage.DONE
        return self._emit(Stage.DONE, 1.0, message, force=True)

    # -- internals ----------------------------------------------------------------------

    def _eta(self, fraction: float) -> float | None:
        if self._stage is not Stage.SAMPLING or self._sampling_started is None or fraction <= 0:
            return None
        elapsed = self._clock() - self._sampling_started
        if elapsed <= 0:
            return None
        return round(elapsed * (1.0 - fraction) / fraction, 1)

    def _emit(self, stage: Stage, fraction: float, message: str | None, *, force: bool) -> dict[str, Any] | None:
        with self._lock:
            return self._emit_locked(stage, fraction, message, force=force)

    def _emit_locked(self, stage: Stage, fraction: float, message: str | None, *, force: bool) -> dict[str, Any] | None:
        fraction = min(1.0, max(0.0, float(fraction)))
        lo, hi = stage.band
        percent = max(self._percent, round(lo + (hi - lo) * fraction, 1))
        self._percent = percent
        now = self._clock()
        if not force and self._last_emit is not None and now - self._last_emit < self._min_interval:
            return None
        payload: dict[str, Any] = {
            "stage": stage.value,
            "percent": percent,
            "message": message or _DEFAULT_MESSAGES[stage],
            "chunk": self._chunk,
            "chunks": self._chunks,
            "step": self._step,
            "steps": self._steps,
        }
        eta = self._eta(fraction)
        if eta is not None:
            payload["eta_s"] = eta
        payload.update(self._extra)
        self._last_emit = now
        self.last = payload
        try:
            self._sink(dict(payload))
        except Exception:  # noqa: BLE001 - progress is best effort
            self.sink_errors += 1
        return payload

