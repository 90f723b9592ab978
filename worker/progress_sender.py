"""Delivers progress payloads to Runpod one at a time, in the order they were made.

`runpod.serverless.progress_update` posts each payload from a new thread, so two updates made
microseconds apart (a warm model's "load" then "encode") can reach the endpoint in either order
and a client polling `/status` sees the stages go backwards. Here one daemon thread posts
sequentially; a newer payload of the same stage replaces an older one still waiting, so a slow
endpoint costs fewer posts, never a stage change. `close()` drains with a time limit at the end
of a job so the last stage is delivered before the result and nothing outlives the job.

Outside Runpod (`--test_input`, `--rp_serve_api`) the SDK has no job-done URL, and a post would
only log a failed request per update; `progress_delivery` then writes each update to the log.

runpod is imported only inside the functions that post, so the module stays import-light.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, Callable, Mapping

from worker.logging_setup import get_logger

__all__ = ["OrderedSender", "progress_delivery", "runpod_post"]

Deliver = Callable[[dict[str, Any]], None]


class OrderedSender:
    """A progress sink (callable with one payload) backed by one sending thread."""

    def __init__(self, deliver: Deliver, *, name: str = "progress-sender") -> None:
        self._deliver = deliver
        self._pending: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self.sent = 0
        self.failed = 0
        self.coalesced = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __call__(self, payload: dict[str, Any]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("progress sender is closed")
            last = self._pending[-1] if self._pending else None
            if last is not None and last.get("stage") == payload.get("stage"):
                self._pending[-1] = payload  # same stage still waiting: only the newest matters
                self.coalesced += 1
            else:
                self._pending.append(payload)
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> bool:
        """Stop taking payloads and wait up to `timeout` s for the queue to drain. True if it did."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and drained
                payload = self._pending.popleft()
            try:
                self._deliver(payload)
                self.sent += 1
            except Exception:  # noqa: BLE001 - progress is best effort and must not kill the thread
                self.failed += 1


def runpod_post(job: Mapping[str, Any], payload: dict[str, Any]) -> None:
    """Post one IN_PROGRESS payload to the SDK's job-done URL and wait for it (what
    `progress_update` does in its own thread, made blocking so the caller decides the order)."""
    from runpod.http_client import AsyncClientSession
    from runpod.serverless.modules.rp_http import send_result

    async def post() -> None:
        async with AsyncClientSession() as session:
            await send_result(session, {"status": "IN_PROGRESS", "output": payload}, dict(job))

    asyncio.run(post())


def progress_delivery(job: Mapping[str, Any]) -> Deliver:
    """How this process delivers a job's progress: posted to Runpod when the SDK has a job-done
    URL (a deployed worker, or the local endpoint's workers), else logged."""
    from runpod.serverless.modules import rp_http

    if str(rp_http.JOB_DONE_URL).startswith(("http://", "https://")):
        return lambda payload: runpod_post(job, payload)
    log = get_logger("worker.progress")
    job_id = str(job.get("id", "local"))
    return lambda payload: log.info("progress", job_id=job_id, **payload)
