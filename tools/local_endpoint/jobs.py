"""In-memory job records and the JSON Runpod returns for them.

One store per server; every mutation happens on the server's event loop, so no locks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .models import JobStatus

_MISSING = object()


def new_job_id(sync: bool) -> str:
    """Runpod ids are a uuid4 with a region suffix; /runsync ids carry a `sync-` prefix."""
    base = f"{uuid.uuid4()}-u1"
    return f"sync-{base}" if sync else base


@dataclass
class Job:
    id: str
    input: Any
    webhook: str | None
    execution_timeout_s: float
    ttl_s: float
    retention_s: float
    status: JobStatus = JobStatus.IN_QUEUE
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    output: Any = _MISSING
    error: str | None = None
    progress: Any = _MISSING
    stream: list[dict[str, Any]] = field(default_factory=list)
    stream_cursor: int = 0
    retries: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def worker_payload(self) -> dict[str, Any]:
        """What the handler receives, as a Runpod worker gets it from job-take."""
        return {"id": self.id, "input": self.input}

    def deadline(self) -> float | None:
        """ttl bounds the whole life of the job from (re)queueing; executionTimeout bounds the run."""
        if self.status is JobStatus.IN_QUEUE:
            return self.queued_at + self.ttl_s
        if self.status is JobStatus.IN_PROGRESS and self.started_at is not None:
            return min(self.started_at + self.execution_timeout_s, self.queued_at + self.ttl_s)
        return None

    def to_status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status.value}
        if self.started_at is not None:
            body["delayTime"] = int(round((self.started_at - self.queued_at) * 1000))
            if self.finished_at is not None:
                body["executionTime"] = int(round((self.finished_at - self.started_at) * 1000))
        if self.status is JobStatus.IN_PROGRESS:
            if self.progress is not _MISSING:
                body["output"] = self.progress
        elif self.output is not _MISSING:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        if self.worker_id is not None:
            body["workerId"] = self.worker_id
        if self.retries:
            body["retries"] = self.retries
        return body

    def take_stream(self) -> dict[str, Any]:
        """Stream pieces not yet handed out; each call consumes them, as Runpod's /stream does."""
        pieces = self.stream[self.stream_cursor :]
        self.stream_cursor = len(self.stream)
        return {"id": self.id, "status": self.status.value, "stream": pieces}

    def reset_for_retry(self) -> None:
        self.status = JobStatus.IN_QUEUE
        self.queued_at = time.monotonic()
        self.started_at = self.finished_at = None
        self.worker_id = None
        self.output = _MISSING
        self.error = None
        self.progress = _MISSING
        self.stream = []
        self.stream_cursor = 0
        self.retries += 1
        self.done = asyncio.Event()


@dataclass
class Counters:
    completed: int = 0
    failed: int = 0
    retried: int = 0


class JobStore:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        # Jobs not yet final: the scheduler's per-tick work scans these, not every job kept for its retention.
        self.active: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.counters = Counters()

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.active[job.id] = job
        self.queue.append(job.id)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def requeue(self, job: Job) -> None:
        job.reset_for_retry()
        self.active[job.id] = job
        self.queue.append(job.id)
        self.counters.retried += 1

    def pop_queued(self) -> Job | None:
        while self.queue:
            job = self.jobs.get(self.queue.popleft())
            if job is not None and job.status is JobStatus.IN_QUEUE:
                return job
        return None

    def queued(self) -> list[Job]:
        return [j for j in self.active.values() if j.status is JobStatus.IN_QUEUE]

    def running(self) -> list[Job]:
        return [j for j in self.active.values() if j.status is JobStatus.IN_PROGRESS]

    def count_final(self, status: JobStatus) -> None:
        if status is JobStatus.COMPLETED:
            self.counters.completed += 1
        elif status in (JobStatus.FAILED, JobStatus.TIMED_OUT):
            self.counters.failed += 1

    def drop_expired(self, now: float) -> None:
        """Forget finished jobs past their result retention: their status then answers 404, like Runpod."""
        for job_id in [j.id for j in self.jobs.values() if j.finished_at is not None and now - j.finished_at > j.retention_s]:
            del self.jobs[job_id]
