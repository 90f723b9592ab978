"""Sequential read-ahead of checkpoint files while a loader consumes them through memory maps.

Why: the loaders touch memory-mapped tensors in the module's order, one page fault at a time. When a
file's layout differs from that order (or the reads are small), the disk sees scattered, shallow reads:
a cold umT5 `.pth` loaded at 0.5 GB/s on a disk that streams 1.25 GB/s (bench/README.md section 9).
A background thread reading each file front to back in large blocks keeps the disk streaming at its
full rate and turns the loader's page faults into page-cache hits. The bytes read land in the page
cache only (clean, reclaimable); the thread's own buffer is one block.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

BLOCK = 16 << 20


class Prefetcher:
    """Reads `files` in order in a daemon thread until done or `stop()`; never raises into the loader
    (a read error here only means the loader reads those pages itself and reports any real problem)."""

    def __init__(self, files: Iterable[Path | str], block: int = BLOCK) -> None:
        self.files = [Path(f) for f in files]
        self.block = block
        self.bytes_read = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray(self.block)
        view = memoryview(buf)
        for path in self.files:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                while not self._stop.is_set():
                    n = os.readv(fd, [view])
                    if n <= 0:
                        break
                    self.bytes_read += n
            except OSError:
                pass
            finally:
                os.close(fd)
            if self._stop.is_set():
                return

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

