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



def memory_budget(fraction: float = 0.6) -> int:
    """Bytes of page cache a start-up read-ahead may fill: `fraction` of what the host (or the container's
    cgroup limit, when lower) has available. Beyond it, pages read early would be evicted before the loader
    reaches them, so the disk would read them twice."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: limit minus usage
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            room = max(int(limit) - used, 0)
            available = room if available is None else min(available, room)
    except (OSError, ValueError):
        pass
    return int((available or 0) * fraction)


def warm_start(files: Iterable[Path | str], budget: int | None = None) -> Prefetcher:
    """Start streaming a whole checkpoint, in the loader's order, at process start (before torch is imported).

    Why: a cold worker spends ~5 s importing torch and ~5 s more setting up CUDA and modules before and between
    the weight reads, with the disk idle. Read from the first second, the files are in the page cache when each
    loader gets to them, so start-up approaches the disk's read time (bench/README.md, cold start). Only the
    leading files that fit `budget` (default: `memory_budget()`) are read; missing files are skipped."""
    budget = memory_budget() if budget is None else budget
    chosen: list[Path] = []
    total = 0
    for f in files:
        path = Path(f)
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if total + size > budget:
            break
        chosen.append(path)
        total += size
    return Prefetcher(chosen)
