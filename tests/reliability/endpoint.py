"""The local Runpod-compatible endpoint as a real subprocess, driven over HTTP like Runpod's API."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
ENDPOINT_ID = "reliability"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalEndpoint:
    def __init__(
        self,
        tmp: Path,
        overrides: list[str],
        *,
        workers: int = 1,
        handler: str = "worker.handler:handler",
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/v2/{ENDPOINT_ID}"
        self.log_path = Path(tmp) / f"endpoint-{self.port}.log"
        self.workers = workers
        penv = {**os.environ, "INFINITETALK_OVERRIDES": json.dumps(overrides), "INFINITETALK_PRELOAD": "1",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.local_endpoint", "--handler", handler, "--port", str(self.port),
             "--workers", str(workers), "--endpoint-id", ENDPOINT_ID, *extra_args],
            cwd=REPO, env=penv, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(timeout=30, headers={"Authorization": "local"})
        self.ready_timeout_s = ready_timeout_s

    def __enter__(self) -> "LocalEndpoint":
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"endpoint exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                w = self.http.get(f"{self.base}/health", timeout=2).json()["workers"]
                if w["idle"] >= self.workers:
                    return self
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"endpoint not ready:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.2)

    def __exit__(self, *exc: Any) -> None:
        self.http.close()
        stop_process(self.proc, timeout=15)
        self._log.close()

    # ------------------------------------------------------------------ API
    def submit(self, payload: dict[str, Any]) -> str:
        r = self.http.post(f"{self.base}/run", json={"input": payload})
        r.raise_for_status()
        return r.json()["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"{self.base}/status/{job_id}")
        r.raise_for_status()
        return r.json()

    def retry(self, job_id: str) -> dict[str, Any]:
        r = self.http.post(f"{self.base}/retry/{job_id}")
        r.raise_for_status()
        return r.json()

    def health(self) -> dict[str, Any]:
        return self.http.get(f"{self.base}/health").json()

    def wait(self, job_id: str, timeout: float = 300, poll: float = 0.1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(job_id)
            if st["status"] in FINAL:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {st['status']} after {timeout} s")
            time.sleep(poll)

    def run_and_wait(self, payload: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        return self.wait(self.submit(payload), timeout)

    def worker_pids(self) -> list[int]:
        """Processes spawned by the endpoint to run jobs (not multiprocessing's resource tracker)."""
        import psutil

        out = []
        for child in psutil.Process(self.proc.pid).children(recursive=False):
            try:
                cmd = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "spawn_main" in cmd and "resource_tracker" not in cmd:
                out.append(child.pid)
        return out
