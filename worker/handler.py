"""The Runpod Serverless entry point: `python -m worker.handler` (also with --rp_serve_api / --test_input).

The config is composed once at worker start (overrides come from the environment, see
configuration/), the engine is loaded once and kept warm, and Runpod runs one job at a time
per worker. A failed job returns Runpod's `{"error": <JSON string>}`; unrecoverable GPU states
add `refresh_worker` so Runpod replaces this worker after the job.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from configuration import compose_config, secret_values
from contract.errors import ErrorCode, JobError, jsonable
from worker.job import JobContext, run_job
from worker.logging_setup import configure_logging, get_logger
from worker.progress_sender import OrderedSender, progress_delivery
from worker.wiring import process_env

_CTX: JobContext | None = None
log = get_logger("worker.handler")


def context() -> JobContext:
    global _CTX
    if _CTX is None:
        cfg = compose_config()
        configure_logging(cfg.server.log_level, secrets=secret_values(cfg))
        apply_process_env(cfg)
        _CTX = JobContext.create(_own_work_dir(cfg))
    return _CTX


def _own_work_dir(cfg: Any) -> Any:
    """The config with this process's own folder under server.work_dir (`w-<pid>`).

    A job's folder is removed by the job itself, except when its process is killed (cancel,
    timeout, OOM kill). Per-process folders let the next job on any process sharing the work dir
    see which leftovers belong to a dead process and remove them (`sweep_dead_work_dirs`).
    """
    server = dataclasses.replace(cfg.server, work_dir=str(Path(cfg.server.work_dir) / f"w-{os.getpid()}"))
    return dataclasses.replace(cfg, server=server)


def sweep_dead_work_dirs(root: Path) -> list[Path]:
    """Remove `w-<pid>` folders of processes that no longer run; returns what was removed."""
    removed = []
    try:
        entries = list(root.glob("w-*"))
    except OSError:
        return removed
    for folder in entries:
        pid = folder.name[2:]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def apply_process_env(cfg: Any, environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The GPU tier's process environment (e.g. PYTORCH_CUDA_ALLOC_CONF), set before the engine
    imports torch; a value the endpoint's own environment sets wins. Returns what was set."""
    applied = {}
    for key, value in process_env(cfg).items():
        if key not in environ:
            environ[key] = applied[key] = value
    torch = sys.modules.get("torch")
    if applied and torch is not None and torch.cuda.is_initialized():  # the allocator has read its config
        log.warning("CUDA started before the GPU tier's environment was set", keys=sorted(applied))
    return applied


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job. Whatever the input held, the answer is plain JSON that UTF-8 can encode (an
    output, or an error string with a code): a result that cannot be sent is a result lost."""
    job_id = jsonable(str(job.get("id", "local")))
    sender = OrderedSender(progress_delivery(job))
    own: Path | None = None
    try:
        ctx = context()
        if Path(ctx.cfg.server.work_dir).name == f"w-{os.getpid()}":  # the layout context() sets up
            own = Path(ctx.cfg.server.work_dir)
            for gone in sweep_dead_work_dirs(own.parent):
                log.info("removed a killed job's work folder", folder=str(gone))
        return jsonable(run_job(job_id, job.get("input"), ctx, sender))
    except JobError as exc:
        return _error_result(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. the config failed to compose; still a coded answer
        log.error("job failed before it started", error_type=type(exc).__name__)
        return _error_result(JobError(ErrorCode.E_INTERNAL, f"the worker could not run the job ({type(exc).__name__})"))
    finally:
        if own is not None:
            with contextlib.suppress(OSError):
                own.rmdir()  # empty after every job that ran to its end
        if not sender.close(timeout=5.0):  # the last stage goes out before the result
            log.warning("progress updates still pending at the end of the job", job_id=job_id)


def _error_result(exc: JobError) -> dict[str, Any]:
    out: dict[str, Any] = {"error": exc.to_error_string()}
    if exc.refresh_worker:
        out["refresh_worker"] = True
    return out


def preload() -> None:
    """Load the model before the first job (a failure is reported per job as E_PIPELINE_LOAD)."""
    if os.environ.get("INFINITETALK_PRELOAD", "1") != "1":
        return
    try:
        context().engine.get()
    except Exception as exc:  # noqa: BLE001 - the worker must still come up and answer with a clear error
        log.error("model preload failed", error=str(exc))
    model = context().cfg.model
    if model.isolation_preload and model.isolation_path:  # else the first audio_isolation job loads it
        try:
            context().engine.isolator()
        except Exception as exc:  # noqa: BLE001 - as above: such jobs then fail with the reason
            log.error("isolation model preload failed", error=str(exc))


def main() -> None:
    import runpod

    preload()
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
