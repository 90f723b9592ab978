"""Stopping the real servers the tests start (moto, the local endpoint, the UI, the SDK's API)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["handler_server", "stop_process"]


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` s; always reaped, so no
    zombie or held port outlives the fixture."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def handler_server(env: dict[str, str], tmp: Path):
    """The local endpoint serving worker.handler, started with `env` added to this process's environment
    (the server inherits it) and the environment restored afterwards whatever happens."""
    from tests.tools.test_local_endpoint import Server

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return Server("worker.handler:handler", tmp)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
