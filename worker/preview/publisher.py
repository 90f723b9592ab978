"""Publishes a job's preview: each chunk's segment and the rewritten playlist go to the job's store.

Runs on the job's background thread (worker/background.py), in chunk order, beside the final
MP4's encoder. A preview that cannot be stored (a failing bucket, a full volume) is switched off
with a reason in `status()`; it never fails the job, whose final MP4 is the product.

Where things go, under the result's key without `.mp4`:
  `<key>/preview/index.m3u8`, `<key>/preview/seg-00000.ts`, ..., and `<key>.partial.mp4`.
The segments are also kept next to the job's chunk checkpoint (when checkpoints are on) with a
`preview.json` naming them, so a retried job (`/retry`) reuses the segments of the chunks it
resumes after instead of encoding and uploading them again.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import JobError
from worker.logging_setup import get_logger
from worker.preview.partial import assemble_mp4
from worker.preview.playlist import Playlist, SegmentEntry
from worker.preview.segment import SegmentPlan, encode_segment

log = get_logger("worker.preview")

STATE = "preview.json"
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "video/mp2t"


@dataclass(frozen=True)
class Published:
    """One stored segment, as preview.json keeps it."""

    index: int
    name: str
    uri: str
    frames: int
    start: int  # first video frame
    duration_s: float


def partial_every(n: int) -> bool:
    """Whether the rolling partial MP4 is refreshed after segment count `n`: every segment at
    first, then every 4th, so a long job uploads O(n²/4) bytes, not O(n²) (a cancelled job's
    partial then lags the playlist by at most 3 segments; a timeout or failure assembles it whole)."""
    return n <= 4 or n % 4 == 0


class PreviewPublisher:
    def __init__(
        self,
        store: Any,
        key_base: str,
        plan: SegmentPlan,
        folder: Path,
        *,
        on_segment: Callable[[dict[str, Any]], None] | None = None,
        reuse: int = 0,
    ) -> None:
        self.store = store
        self.base = key_base.rstrip("/")
        self.plan = plan
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.on_segment = on_segment
        self.playlist_key = f"{self.base}/preview/index.m3u8"
        self.partial_key = f"{self.base}.partial.mp4"
        self._lock = threading.Lock()
        self._segments: list[Published] = []
        self._frames_in = 0  # raw frames handed in (before the video's length cuts them)
        self._ended = False
        self._playlist_loc: dict[str, str] = {}
        self._partial_loc: dict[str, str] = {}
        self.failed: str | None = None
        self.first_segment_at: float | None = None
        if reuse:
            self._reuse(reuse)

    # ------------------------------------------------------------------ state

    def status(self) -> dict[str, Any]:
        """The `preview` block of progress and of the result."""
        with self._lock:
            if self.failed:
                return {"available": False, "reason": self.failed}
            out: dict[str, Any] = {"available": True, "segments": len(self._segments),
                                   "seconds": round(sum(s.duration_s for s in self._segments), 3),
                                   "ended": self._ended}
            out.update({f"playlist_{k}": v for k, v in self._playlist_loc.items()})
            out.update({f"partial_{k}": v for k, v in self._partial_loc.items()})
            return out

    @property
    def segments(self) -> int:
        return len(self._segments)

    def _reuse(self, chunks: int) -> None:
        """Take over the segments of the first `chunks` chunks from an interrupted run of this job."""
        try:
            data = json.loads((self.folder / STATE).read_text())
            kept = [Published(**d) for d in data["segments"] if int(d["index"]) < chunks]
            frames_in = int(data["frames_in"][chunks - 1]) if chunks <= len(data["frames_in"]) else None
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return
        if frames_in is None or len(kept) != chunks or not all((self.folder / p.name).is_file() for p in kept):
            return
        self._segments, self._frames_in = kept, frames_in
        self._frames_in_log = list(data["frames_in"][:chunks])
        log.info("preview resumed", segments=len(kept))

    # ------------------------------------------------------------------ work

    def add_chunk(self, frames: np.ndarray, *, last: bool) -> None:
        """Encode and publish one chunk's segment (on the background thread, in chunk order)."""
        if self.failed:
            return
        start = self._frames_in
        self._frames_in += int(frames.shape[0])
        index = len(self._segments)
        name = f"seg-{index:05d}.ts"
        try:
            n = encode_segment(self.folder / name, frames, start, self.plan, last=last)
            if n == 0:
                if last:
                    self.finish()
                return
            stored = self.store.put(self.folder / name, f"{self.base}/preview/{name}", content_type=SEGMENT_TYPE)
            seg = Published(index=index, name=name, uri=stored.url or name, frames=n, start=start,
                            duration_s=round(n / self.plan.fps, 3))
            with self._lock:
                self._segments.append(seg)
                self._ended = self._ended or last
            self._save_state()
            self._publish_playlist()
            if self.first_segment_at is None:
                self.first_segment_at = time.monotonic()
            if partial_every(len(self._segments)) or last:
                self.refresh_partial()
        except JobError as exc:
            self._fail(f"the preview could not be stored ({exc.message})")
            return
        if self.on_segment is not None:
            self.on_segment({"segment": index, "frames": n, "start_s": round(start / self.plan.fps, 3),
                             "duration_s": seg.duration_s, **self.status()})

    def finish(self) -> None:
        """Mark the playlist complete (#EXT-X-ENDLIST): the job ended, nothing more will come."""
        if self.failed:
            return
        with self._lock:
            self._ended = True
        try:
            self._publish_playlist()
        except JobError as exc:
            self._fail(f"the preview could not be stored ({exc.message})")

    def refresh_partial(self) -> dict[str, str]:
        """(Re)build the MP4 of every segment so far and store it; its location (url or path)."""
        paths = [self.folder / s.name for s in self._segments]
        if not paths:
            return {}
        dest = self.folder / "partial.mp4"
        assemble_mp4(paths, dest)
        stored = self.store.put(dest, self.partial_key, content_type="video/mp4")
        dest.unlink(missing_ok=True)
        with self._lock:
            self._partial_loc = {"url": stored.url} if stored.url else {"path": stored.path}
        return dict(self._partial_loc)

    def discard_partial(self) -> None:
        """The job finished whole: its final MP4 replaces the partial one."""
        discard = getattr(self.store, "discard", None)
        if discard is not None and self._partial_loc:
            discard(self.partial_key)
        with self._lock:
            self._partial_loc = {}

    # ------------------------------------------------------------------ internals

    def _publish_playlist(self) -> None:
        with self._lock:
            pl = Playlist([SegmentEntry(s.uri, s.duration_s, s.frames) for s in self._segments], ended=self._ended)
        path = self.folder / "index.m3u8"
        _atomic_text(path, pl.render())
        stored = self.store.put(path, self.playlist_key, content_type=PLAYLIST_TYPE, cache_control="no-cache")
        with self._lock:
            self._playlist_loc = {"url": stored.url} if stored.url else {"path": stored.path}

    def _save_state(self) -> None:
        log_in = getattr(self, "_frames_in_log", [])
        log_in.append(self._frames_in)
        self._frames_in_log = log_in
        data = {"segments": [asdict(s) for s in self._segments], "frames_in": log_in}
        try:
            _atomic_text(self.folder / STATE, json.dumps(data))
        except OSError:
            pass  # only a retry would have used it

    def _fail(self, reason: str) -> None:
        log.warning("preview switched off", reason=reason)
        with self._lock:
            self.failed = reason


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
