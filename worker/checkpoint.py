"""Chunk checkpoints of a running job, so that a retried job (Runpod's `/retry`, same id) resumes.

Why: a streaming job of several minutes that loses its worker (preemption, a killed process, a
host failure) would otherwise start again from chunk 0. After every finished chunk the job
stores, under `<checkpoint_dir>/<job id>/`:

- `chunk-<k>.npz`: the chunk's new frames, uint8 [n, H, W, 3], lossless (the final MP4 is encoded
  once from all frames, so a resumed run yields the same file as an uninterrupted one);
- `state-<k>.bin`: the engine's opaque resume state after chunk k (generator position,
  motion frames, chunk plan), made by `ChunkResult.state.to_bytes()`;
- `manifest.json`: written last, atomically, naming the chunks that are complete, the seed,
  a fingerprint of the job input and who wrote it. A chunk not in the manifest does not exist.

A checkpoint is used only when the retried job's input has the same fingerprint. It is removed
when the job succeeds; folders older than `max_age_s` are swept at the next job start. The
folder should be shared by the endpoint's workers (the network volume), since a retry may land
on another worker. This module does not import torch: the engine state is bytes here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.logging_setup import get_logger

MANIFEST = "manifest.json"
VERSION = 1
DEFAULT_MAX_AGE_S = 2 * 24 * 3600  # Runpod keeps /run results 30 min; a retry comes well within this

log = get_logger("worker.checkpoint")


def fingerprint(payload: Any) -> str:
    """A stable hash of the job input (canonical JSON); a retry sends the same input."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _safe_id(job_id: str) -> str:
    safe = "".join(c for c in str(job_id) if c.isalnum() or c in "-_")[:96]
    return safe or "job"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Resume:
    """What a retried job starts from."""

    seed: int
    chunks: int  # chunks already done (frames of chunks 0..chunks-1 are stored)
    frames: int
    state: bytes

    def __repr__(self) -> str:
        return f"Resume(seed={self.seed}, chunks={self.chunks}, frames={self.frames}, state=<{len(self.state)} bytes>)"


class JobCheckpoint:
    """The checkpoint folder of one job id."""

    def __init__(self, root: Path, job_id: str, input_fingerprint: str) -> None:
        self.root = Path(root)
        self.dir = self.root / _safe_id(job_id)
        self.job_id = str(job_id)
        self.fingerprint = input_fingerprint
        self._manifest: dict[str, Any] | None = None
        self.disabled = False

    # ------------------------------------------------------------------ reading

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            return None
        return data

    def load(self) -> Resume | None:
        """The last complete checkpoint of this input, or None (nothing usable: start from chunk 0)."""
        m = self._read_manifest()
        if m is None:
            return None
        if m.get("job_id") != self.job_id or m.get("fingerprint") != self.fingerprint:
            log.warning("checkpoint ignored: the job input changed", job_id=self.job_id)
            return None
        chunks = m.get("chunks") or []
        if not chunks:
            return None
        try:
            state = (self.dir / chunks[-1]["state"]).read_bytes()
            if hashlib.sha256(state).hexdigest() != chunks[-1]["state_sha256"]:
                raise ValueError("state checksum mismatch")
            for c in chunks:
                if not (self.dir / c["frames"]).is_file():
                    raise ValueError(f"missing {c['frames']}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("checkpoint ignored: incomplete", job_id=self.job_id, reason=str(exc))
            return None
        self._manifest = m
        return Resume(seed=int(m["seed"]), chunks=len(chunks), frames=sum(int(c["n"]) for c in chunks), state=state)

    def frames(self) -> Iterator[np.ndarray]:
        """The stored frames chunk by chunk, in order (after a successful `load`)."""
        m = self._manifest or self._read_manifest() or {}
        for c in m.get("chunks") or []:
            path = self.dir / c["frames"]
            with np.load(path) as z:
                arr = z["frames"]
            if hashlib.sha256(arr.tobytes()).hexdigest() != c["sha256"]:
                raise ValueError(f"checkpoint frames {path.name} are corrupt")
            yield arr

    # ------------------------------------------------------------------ writing

    def save(self, index: int, frames: np.ndarray, state: bytes, *, seed: int) -> bool:
        """Record chunk `index` as done; False (and checkpoints off for this job) when storage fails.

        A checkpoint is an optimisation: a full or failing volume must not fail the job itself.
        """
        if self.disabled:
            return False
        try:
            self._save(index, frames, state, seed)
        except OSError as exc:
            self.disabled = True
            log.warning("checkpoint not written; continuing without", chunk=index, error=exc.strerror or str(exc))
            return False
        return True

    def _save(self, index: int, frames: np.ndarray, state: bytes, seed: int) -> None:
        """Frames and state first, the manifest last."""
        self.dir.mkdir(parents=True, exist_ok=True)
        m = self._manifest
        if m is None or m.get("fingerprint") != self.fingerprint:
            m = {"version": VERSION, "job_id": self.job_id, "fingerprint": self.fingerprint, "seed": int(seed), "chunks": []}
        chunks = [c for c in m["chunks"] if int(c["index"]) < index]
        if len(chunks) != index:
            raise ValueError(f"chunk {index} saved after {len(chunks)} chunks")
        frames = np.ascontiguousarray(frames)
        fname, sname = f"chunk-{index:05d}.npz", f"state-{index:05d}.bin"
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, frames=frames)
        _atomic_write(self.dir / fname, buf.getvalue())
        _atomic_write(self.dir / sname, state)
        chunks.append(
            {
                "index": index,
                "n": int(frames.shape[0]),
                "frames": fname,
                "sha256": hashlib.sha256(frames.tobytes()).hexdigest(),
                "state": sname,
                "state_sha256": hashlib.sha256(state).hexdigest(),
            }
        )
        m = {**m, "seed": int(seed), "chunks": chunks, "updated": time.time(),
             "writer": {"host": socket.gethostname(), "pid": os.getpid()}}
        _atomic_write(self.dir / MANIFEST, json.dumps(m, indent=1).encode())
        self._manifest = m
        # Only the newest state is needed; older ones are dropped to bound the folder's size.
        for c in chunks[:-1]:
            (self.dir / c["state"]).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def open_checkpoint(checkpoint_dir: str | os.PathLike[str] | None, job_id: str, payload: Any) -> JobCheckpoint | None:
    """The job's checkpoint, or None when checkpoints are off (no folder configured)."""
    if not checkpoint_dir:
        return None
    root = Path(checkpoint_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("checkpoints disabled: folder not writable", folder=str(root), error=str(exc))
        return None
    sweep(root)
    return JobCheckpoint(root, job_id, fingerprint(payload))


def sweep(root: Path, max_age_s: float = DEFAULT_MAX_AGE_S) -> int:
    """Remove checkpoint folders not touched for `max_age_s` (jobs that were never retried)."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False) and now - e.stat(follow_symlinks=False).st_mtime > max_age_s:
                shutil.rmtree(e.path, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed
