"""Runs a job's per-chunk host work (H.264 encode, chunk checkpoint) beside the GPU's next chunk.

The generator yields a chunk's frames and then samples the next chunk only when asked, so encoding
in the loop left the GPU idle for the encode (~3 s a 480p chunk on 2 cores, bench/README.md section
10). Here the calls run on one thread, in submission order (the MP4 and the checkpoints need that
order), with at most `depth` calls waiting so host memory stays at a few chunks however long the
video. The first failure is raised in the job's thread: at the next `submit` or at `drain`.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Callable

__all__ = ["SerialBackground"]


class SerialBackground:
    """One background thread; a context manager that drains on success and abandons waiting calls
    (finishing the one already running) when the block raises."""

    def __init__(self, depth: int = 1, name: str = "chunk-writer") -> None:
        if depth < 0:
            raise ValueError("depth must be >= 0")
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue `fn(*args)`; blocks while more than `depth` calls wait; raises an earlier call's error."""
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()
        while len(self._pending) > self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        """Wait for every queued call; the first error is raised and the calls after it are dropped."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._abandon()

    def _abandon(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)  # the running call (if any) finishes: its resources stay consistent

    def __enter__(self) -> "SerialBackground":
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.drain()
        else:
            self._abandon()
