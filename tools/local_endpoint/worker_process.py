"""Entry point of one worker process (multiprocessing spawn).

The process runs the handler the way a Runpod worker does: the unchanged runpod SDK's
`rp_job.handle_job` executes it and posts results, stream pieces and `progress_update` payloads
over HTTP to the URLs named by `RUNPOD_WEBHOOK_POST_OUTPUT` / `RUNPOD_WEBHOOK_POST_STREAM`.
Those env vars point at this server's internal routes, so handler code that calls
`runpod.serverless.progress_update(job, ...)` reaches us without any change. The SDK reads the
vars when `runpod.serverless.modules.rp_http` is first imported, so they are set here, in the
fresh spawned interpreter, before anything imports runpod.

Only job hand-over and "finished" notices use the pipe (Runpod's job-take long-poll would add
latency and nothing of value here). Messages to the parent: ("ready", None),
("idle", job_id), ("import_error", traceback_text).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable


def load_handler(path: str) -> Callable[..., Any]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler must be 'module:function', got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{path} is not callable")
    return obj


def _point_sdk_at_server(worker_id: str, done_url: str, stream_url: str) -> None:
    os.environ["RUNPOD_POD_ID"] = worker_id
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")  # the SDK's default, DEBUG, echoes every output
    os.environ["RUNPOD_WEBHOOK_POST_OUTPUT"] = done_url
    os.environ["RUNPOD_WEBHOOK_POST_STREAM"] = stream_url
    # Left unset on purpose: RUNPOD_WEBHOOK_GET_JOB would make a handler module that calls
    # runpod.serverless.start() at import time try to poll Runpod for jobs.
    os.environ.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    if "runpod.serverless.modules.rp_http" in sys.modules:  # pragma: no cover - imported by a parent __main__
        rp_http = sys.modules["runpod.serverless.modules.rp_http"]
        rp_http.JOB_DONE_URL = done_url.replace("$RUNPOD_POD_ID", worker_id)
        rp_http.JOB_STREAM_URL = stream_url.replace("$RUNPOD_POD_ID", worker_id)


def worker_main(
    conn: Connection,
    handler_path: str,
    worker_id: str,
    done_url: str,
    stream_url: str,
    return_aggregate_stream: bool,
) -> None:
    _point_sdk_at_server(worker_id, done_url, stream_url)
    try:
        from runpod.http_client import AsyncClientSession
        from runpod.serverless.modules.rp_job import handle_job

        handler = load_handler(handler_path)
    except BaseException:  # noqa: BLE001 - any import failure is reported, then the process ends
        conn.send(("import_error", traceback.format_exc()))
        conn.close()
        return

    config = {"handler": handler, "return_aggregate_stream": return_aggregate_stream}

    async def run_one(job: dict[str, Any]) -> None:
        async with AsyncClientSession() as session:
            await handle_job(session, config, job)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            break
        if job is None:
            break
        try:
            loop.run_until_complete(run_one(job))
        except BaseException:  # noqa: BLE001 - the SDK catches handler errors; this is our own failure
            traceback.print_exc()
        conn.send(("idle", job["id"]))
    loop.close()
