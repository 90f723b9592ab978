"""The job's side of the preview: decides whether there is one, feeds it chunks, and turns an early
stop into an error that names the video made so far. worker/job.py calls only what is here."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import JobError
from worker.inputs.netguard import NetPolicy
from worker.logging_setup import get_logger
from worker.preview.events import EventPoster, check_webhook_url
from worker.preview.publisher import PreviewPublisher
from worker.preview.segment import SegmentPlan

log = get_logger("worker.preview")

INLINE_REASON = "inline results have no storage to hold segments; choose output s3, volume or local for a preview"


class PreviewSession:
    """A job's preview and its webhook events; every method is safe to call when the preview is off."""

    def __init__(self, publisher: PreviewPublisher | None, events: EventPoster | None, off_reason: str | None,
                 progress: Any) -> None:
        self.publisher = publisher
        self.events = events
        self.off_reason = off_reason
        self.progress = progress
        self._reused = publisher.segments if publisher is not None else 0
        if publisher is not None:
            publisher.on_segment = self._on_segment
        if off_reason is not None:
            progress.set_extra("preview", {"available": False, "reason": off_reason})

    # ---------------------------------------------------------------- feeding

    def add_chunk(self, frames: np.ndarray, *, last: bool) -> None:
        if self.publisher is not None:
            self.publisher.add_chunk(frames, last=last)

    def add_resumed(self, index: int, frames: np.ndarray) -> None:
        """A chunk restored from the checkpoint: its segment is encoded only if not reused."""
        if self.publisher is None:
            return
        if index < self._reused:
            return
        self.publisher.add_chunk(frames, last=False)

    def _on_segment(self, body: dict[str, Any]) -> None:
        self.progress.set_extra("preview", self.status())
        if self.events is not None:
            self.events.post("segment", body)

    # ---------------------------------------------------------------- the end

    def status(self) -> dict[str, Any] | None:
        if self.publisher is not None:
            return self.publisher.status()
        if self.off_reason is not None:
            return {"available": False, "reason": self.off_reason}
        return None

    def result_fields(self) -> dict[str, Any]:
        """`preview` (and `preview_url` when the playlist has a URL) for the job's result."""
        status = self.status()
        if status is None:
            return {}
        return {"preview": status, **({"preview_url": status["playlist_url"]} if "playlist_url" in status else {})}

    def completed(self, output: dict[str, Any]) -> None:
        """The final MP4 is stored: close the playlist, drop the partial MP4, post `done`."""
        if self.publisher is not None:
            self.publisher.finish()
            self.publisher.discard_partial()
            self.progress.set_extra("preview", self.status())
        if self.events is not None:
            self.events.post("done", {"status": "COMPLETED", "output": {
                k: v for k, v in output.items() if k not in ("video_base64", "config", "timings_s")}})
            self.events.close()

    def stopped(self, err: JobError) -> JobError:
        """The job ends early with `err`: store the video made so far and name it in the error."""
        extra: dict[str, Any] = {}
        pub = self.publisher
        if pub is not None and pub.segments and not pub.failed:
            try:
                loc = pub.refresh_partial()
                pub.finish()
                extra = {f"partial_video_{k}": v for k, v in loc.items()}
                extra["partial_duration_s"] = pub.status()["seconds"]
                extra.update({f"preview_{k[len('playlist_'):]}": v for k, v in pub.status().items()
                              if k.startswith("playlist_")})
            except JobError as exc:
                log.warning("partial video not stored", error=exc.message)
        if self.events is not None:
            self.events.post("done", {"status": "FAILED", "error": err.to_dict() | ({"details": {**(err.details or {}), **extra}} if extra else {})})
            self.events.close()
        if not extra:
            return err
        details = dict(err.details) if isinstance(err.details, dict) else ({} if err.details is None else {"details": err.details})
        return JobError(err.code, err.message, err.hint, {**details, **extra}, refresh_worker=err.refresh_worker)


def open_preview(
    *, job_id: str, job: Any, resolved: Any, store: Any, key: str, soundtrack: np.ndarray, fps: int,
    audio_rate: int, folder: Path, reuse: int, progress: Any, net: NetPolicy,
) -> PreviewSession:
    """The job's preview: on by default in streaming mode, off with `preview: false`, unavailable
    (said so in progress and result, not an error) for inline results."""
    events = None
    url = getattr(job, "webhook_url", None)
    kinds = frozenset(getattr(job, "webhook_events", None) or ())
    if url:  # checked even with no events to post: the contract refuses private addresses, whatever is sent
        check_webhook_url(url, net)
    if url and kinds:
        events = EventPoster(job_id, url, kinds, net)
    wanted = job.preview if getattr(job, "preview", None) is not None else resolved.mode == "streaming"
    if not wanted:
        return PreviewSession(None, events, None, progress)
    if getattr(store, "location", "") == "inline":
        return PreviewSession(None, events, INLINE_REASON, progress)
    plan = SegmentPlan(audio=soundtrack, fps=fps, audio_rate=audio_rate)
    base = key[: -len(".mp4")] if key.endswith(".mp4") else key
    return PreviewSession(PreviewPublisher(store, base, plan, folder, reuse=reuse), events, None, progress)
