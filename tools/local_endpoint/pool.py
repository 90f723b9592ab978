"""Worker processes: spawn, hand a job over, kill and replace.

A worker that is killed (cancel, executionTimeout, refresh_worker, crash) is replaced by a new
process with a new id, so late HTTP posts from the old one can be told apart and dropped.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

import structlog

from .settings import ServerSettings
from .worker_process import worker_main

log = structlog.get_logger("local_endpoint.pool")


class UnsendableJob(Exception):
    """The job's payload cannot be serialised for a worker process."""


class WorkerState(StrEnum):
    INITIALIZING = "initializing"
    IDLE = "idle"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"  # handler failed to import; respawned after a backoff


@dataclass
class WorkerHandle:
    id: str
    process: BaseProcess
    conn: Connection
    state: WorkerState = WorkerState.INITIALIZING
    job_id: str | None = None
    refresh_after_job: bool = False
    last_error: str | None = None
    respawn_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    def messages(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        try:
            while self.conn.poll(0):
                out.append(self.conn.recv())
        except (EOFError, OSError):
            pass
        return out


class WorkerPool:
    def __init__(self, settings: ServerSettings, internal_token: str) -> None:
        self.settings = settings
        self.token = internal_token
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: dict[str, WorkerHandle] = {}

    def _urls(self) -> tuple[str, str]:
        base = self.settings.internal_base_url
        # The SDK replaces $RUNPOD_POD_ID once at import and $ID per job, then appends "&isStream=...".
        done = f"{base}/_local/job-done/$RUNPOD_POD_ID/$ID?token={self.token}"
        stream = f"{base}/_local/job-stream/$RUNPOD_POD_ID/$ID?token={self.token}"
        return done, stream

    def spawn(self) -> WorkerHandle:
        worker_id = f"local-{uuid.uuid4().hex[:12]}"
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        done_url, stream_url = self._urls()
        proc = self.ctx.Process(
            target=worker_main,
            args=(child_conn, self.settings.handler, worker_id, done_url, stream_url, self.settings.return_aggregate_stream),
            name=f"runpod-worker-{worker_id}",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        handle = WorkerHandle(id=worker_id, process=proc, conn=parent_conn)
        self.workers[worker_id] = handle
        log.info("worker_spawned", worker_id=worker_id, pid=proc.pid, handler=self.settings.handler)
        return handle

    def start(self) -> None:
        for _ in range(self.settings.workers):
            self.spawn()

    def get(self, worker_id: str | None) -> WorkerHandle | None:
        return self.workers.get(worker_id) if worker_id else None

    def idle(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.state is WorkerState.IDLE]

    def assign(self, worker: WorkerHandle, payload: dict[str, Any]) -> None:
        """Send a job to an idle worker. The payload is pickled before anything is written, so one
        that cannot be (too deep, say) raises UnsendableJob and leaves the worker idle and usable."""
        try:
            data = ForkingPickler.dumps(payload)
        except Exception as exc:  # noqa: BLE001 - RecursionError, PicklingError, ...
            raise UnsendableJob(type(exc).__name__) from None
        worker.state = WorkerState.RUNNING
        worker.job_id = payload["id"]
        worker.conn.send_bytes(data)

    def kill(self, worker: WorkerHandle) -> None:
        self.workers.pop(worker.id, None)
        try:
            worker.process.kill()
            worker.process.join(timeout=5)
        except (OSError, ValueError):
            pass
        worker.conn.close()
        log.info("worker_killed", worker_id=worker.id, job_id=worker.job_id)

    def replace(self, worker: WorkerHandle) -> WorkerHandle:
        self.kill(worker)
        return self.spawn()

    def counts(self) -> dict[str, int]:
        states = [w.state for w in self.workers.values()]
        idle = states.count(WorkerState.IDLE)
        return {
            "idle": idle,
            "initializing": states.count(WorkerState.INITIALIZING),
            "ready": idle,
            "running": states.count(WorkerState.RUNNING),
            "throttled": 0,
            "unhealthy": states.count(WorkerState.UNHEALTHY),
        }

    def shutdown(self) -> None:
        for worker in list(self.workers.values()):
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2
        for worker in list(self.workers.values()):
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=2)
        self.workers.clear()
