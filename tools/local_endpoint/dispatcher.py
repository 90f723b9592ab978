"""The queue: hands jobs to idle workers and enforces cancel, executionTimeout, ttl, retention.

Runs as one asyncio task on the server's loop, so job and worker state change in one place.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog

from .jobs import Job, JobStore, new_job_id
from .models import RETRYABLE, JobStatus, RunRequest
from .pool import UnsendableJob, WorkerHandle, WorkerPool, WorkerState
from .settings import ServerSettings
from .webhook import deliver

log = structlog.get_logger("local_endpoint.dispatcher")


class RetryRefused(Exception):
    pass


def _coded(code: str, message: str) -> str:
    """An error string in the worker's format (`JobError.to_error_string`), so clients parse one shape."""
    from contract.errors import JobError

    return JobError(code, message).to_error_string()


class Dispatcher:
    def __init__(self, settings: ServerSettings, pool: WorkerPool) -> None:
        self.settings = settings
        self.pool = pool
        self.store = JobStore()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._last_sweep = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.pool.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="local-endpoint-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for task in list(self._background):
            task.cancel()
        await asyncio.to_thread(self.pool.shutdown)

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - one bad tick must not stop the endpoint
                # No traceback: its frames' locals would hold job payloads (and once took 25 MB to print).
                log.error("dispatcher_tick_failed", error_type=type(exc).__name__)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.tick_s)
            except TimeoutError:
                pass

    def kick(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ public operations
    def submit(self, request: RunRequest, *, sync: bool) -> Job:
        policy = request.policy
        exec_ms = (policy.executionTimeout if policy and policy.executionTimeout else None) or self.settings.execution_timeout_ms
        ttl_ms = (policy.ttl if policy and policy.ttl else None) or self.settings.ttl_ms
        job = Job(
            id=new_job_id(sync),
            input=request.input,
            webhook=request.webhook,
            execution_timeout_s=exec_ms / 1000,
            ttl_s=ttl_ms / 1000,
            retention_s=self.settings.runsync_retention_s if sync else self.settings.run_retention_s,
        )
        self.store.add(job)
        log.info("job_queued", job_id=job.id, sync=sync)
        self.kick()
        return job

    def cancel(self, job: Job) -> None:
        if job.status is JobStatus.IN_QUEUE:
            self._finish(job, JobStatus.CANCELLED)
        elif job.status is JobStatus.IN_PROGRESS:
            worker = self.pool.get(job.worker_id)
            self._finish(job, JobStatus.CANCELLED)
            if worker is not None:
                self.pool.replace(worker)
        self.kick()

    def retry(self, job: Job) -> None:
        if job.status not in RETRYABLE:
            raise RetryRefused(f"job is {job.status.value}; only {', '.join(sorted(s.value for s in RETRYABLE))} jobs can be retried")
        self.store.requeue(job)
        log.info("job_retried", job_id=job.id, retries=job.retries)
        self.kick()

    def purge_queue(self) -> int:
        queued = self.store.queued()
        for job in queued:
            self._finish(job, JobStatus.CANCELLED)
        self.store.queue.clear()
        return len(queued)

    def health(self) -> dict[str, Any]:
        counters = self.store.counters
        return {
            "jobs": {
                "completed": counters.completed,
                "failed": counters.failed,
                "inProgress": len(self.store.running()),
                "inQueue": len(self.store.queued()),
                "retried": counters.retried,
            },
            "workers": self.pool.counts(),
        }

    # ------------------------------------------------------------------ reports from workers (HTTP, via the SDK)
    def _current_job(self, worker_id: str, job_id: str) -> Job | None:
        job = self.store.get(job_id)
        if job is None or job.status is not JobStatus.IN_PROGRESS or job.worker_id != worker_id:
            return None
        return job

    def on_job_done(self, worker_id: str, job_id: str, body: Any) -> bool:
        """A post to the SDK's JOB_DONE_URL: a progress_update while running, else the final result."""
        job = self._current_job(worker_id, job_id)
        if job is None or not isinstance(body, dict):
            return False
        if body.get("status") == JobStatus.IN_PROGRESS.value:
            job.progress = body.get("output")
            return True
        worker = self.pool.get(worker_id)
        if body.get("stopPod") and worker is not None:
            worker.refresh_after_job = True
        error = body.get("error")
        if error is not None:
            if not isinstance(error, str):
                error = json.dumps(error)  # Runpod only carries a string error
            self._finish(job, JobStatus.FAILED, error=error, **({"output": body["output"]} if "output" in body else {}))
        else:
            self._finish(job, JobStatus.COMPLETED, **({"output": body["output"]} if "output" in body else {}))
        return True

    def on_job_stream(self, worker_id: str, job_id: str, body: Any) -> bool:
        job = self._current_job(worker_id, job_id)
        if job is None or not isinstance(body, dict):
            return False
        job.stream.append({"output": body.get("output")})
        return True

    # ------------------------------------------------------------------ internals
    def _finish(self, job: Job, status: JobStatus, **fields: Any) -> None:
        if job.status.is_final:
            return
        job.finished_at = time.monotonic()  # also for jobs that never ran: starts their retention
        job.status = status
        if "output" in fields:
            job.output = fields["output"]
        if fields.get("error") is not None:
            job.error = fields["error"]
        self.store.count_final(status)
        self.store.active.pop(job.id, None)
        if status not in RETRYABLE:
            job.input = None  # only a retry needs it again; finished jobs stay small for their retention
        job.done.set()
        log.info("job_finished", job_id=job.id, status=status.value)
        if job.webhook:
            self._spawn_background(
                deliver(
                    job.webhook,
                    job.to_status(),
                    retries=self.settings.webhook_retries,
                    delay_s=self.settings.webhook_retry_delay_s,
                    timeout_s=self.settings.webhook_timeout_s,
                    allow=self.settings.webhook_allow,
                )
            )

    def _spawn_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def tick(self) -> None:
        now = time.monotonic()
        self._service_workers(now)
        self._enforce_deadlines(now)
        self._dispatch(now)
        if now - self._last_sweep >= 1.0:  # retention is minutes long; a scan per second is plenty
            self._last_sweep = now
            self.store.drop_expired(now)

    def _service_workers(self, now: float) -> None:
        for worker in list(self.pool.workers.values()):
            for kind, payload in worker.messages():
                self._on_worker_message(worker, kind, payload)
            if worker.id not in self.pool.workers:
                continue
            if worker.state is WorkerState.UNHEALTHY:
                if worker.respawn_at is not None and now >= worker.respawn_at:
                    self.pool.replace(worker)
                continue
            if not worker.process.is_alive() and worker.state is WorkerState.INITIALIZING:
                # died before it could even report an import error (segfault, os._exit in the module)
                worker.state = WorkerState.UNHEALTHY
                worker.last_error = f"worker process exited during start (exit code {worker.process.exitcode})"
                worker.respawn_at = now + self.settings.worker_restart_backoff_s
                log.error("worker_start_failed", worker_id=worker.id, exitcode=worker.process.exitcode)
                continue
            if not worker.process.is_alive():
                code = worker.process.exitcode
                job = self.store.get(worker.job_id) if worker.job_id else None
                if job is not None and job.status is JobStatus.IN_PROGRESS and job.worker_id == worker.id:
                    self._finish(job, JobStatus.FAILED, error=f"worker process exited unexpectedly (exit code {code})")
                log.warning("worker_died", worker_id=worker.id, exitcode=code)
                self.pool.replace(worker)

    def _on_worker_message(self, worker: WorkerHandle, kind: str, payload: Any) -> None:
        if kind == "ready":
            worker.state = WorkerState.IDLE
            log.info("worker_ready", worker_id=worker.id)
        elif kind == "idle":
            job = self.store.get(payload)
            if job is not None and job.status is JobStatus.IN_PROGRESS and job.worker_id == worker.id:
                self._finish(job, JobStatus.FAILED, error="worker finished the job without reporting a result")
            worker.job_id = None
            if worker.refresh_after_job:
                log.info("worker_refresh", worker_id=worker.id)
                self.pool.replace(worker)
            else:
                worker.state = WorkerState.IDLE
        elif kind == "import_error":
            worker.state = WorkerState.UNHEALTHY
            worker.last_error = payload
            worker.respawn_at = time.monotonic() + self.settings.worker_restart_backoff_s
            log.error("handler_import_failed", worker_id=worker.id, handler=self.settings.handler, traceback=payload)

    def _enforce_deadlines(self, now: float) -> None:
        for job in list(self.store.active.values()):
            deadline = job.deadline()
            if deadline is None or now < deadline:
                continue
            if job.status is JobStatus.IN_QUEUE:
                self._finish(job, JobStatus.TIMED_OUT, error="job expired in queue (policy.ttl) before a worker picked it up")
            else:
                worker = self.pool.get(job.worker_id)
                by_ttl = job.started_at is not None and job.queued_at + job.ttl_s <= job.started_at + job.execution_timeout_s
                reason = "its ttl (policy.ttl)" if by_ttl else "its execution timeout (policy.executionTimeout)"
                self._finish(job, JobStatus.TIMED_OUT, error=f"job exceeded {reason}")
                if worker is not None:
                    self.pool.replace(worker)

    def _dispatch(self, now: float) -> None:
        for worker in self.pool.idle():
            job = self.store.pop_queued()
            if job is None:
                return
            job.status = JobStatus.IN_PROGRESS
            job.started_at = now
            job.worker_id = worker.id
            log.info("job_started", job_id=job.id, worker_id=worker.id)
            try:
                self.pool.assign(worker, job.worker_payload())
            except UnsendableJob as err:  # nothing was sent: the worker stays idle for the next job
                self._finish(job, JobStatus.FAILED, error=_coded("E_INPUT_VALIDATION", f"the job cannot be handed to a worker ({err})"))
            except (OSError, ValueError) as err:
                self._finish(job, JobStatus.FAILED, error=_coded("E_INTERNAL", f"could not hand the job to a worker ({type(err).__name__})"))
                self.pool.replace(worker)
