"""Fixtures for client tests: the project's local endpoint (real subprocesses) and the fault proxy.

- `fixture_endpoint`: the local endpoint running the test handlers (fast echo/progress/sleep jobs).
- `tiny_endpoint`: the local endpoint running the real handler (worker.handler) with the tiny
  model, as `python -m tools.local_endpoint --handler worker.handler:handler` does.
- `proxy` / `tiny_proxy`: a FaultProxy in front of each, with its faults cleared per test.
Both servers run from the worker environment (.venv); the UI runs from .venv-client.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.client.faultproxy import FaultProxy
from tests.processes import stop_process
from tests.worker.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ENDPOINT_ID = "local-test"
CLIENT_PYTHON = REPO_ROOT / ".venv-client" / "bin" / "python"
ARTIFACTS = REPO_ROOT / "test-artifacts"
MEDIA = REPO_ROOT / "examples" / "media"


class LocalEndpoint:
    def __init__(self, handler: str, log_path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoint_url = f"{self.url}/v2/{ENDPOINT_ID}"
        self.log_path = log_path
        self._log = log_path.open("w")
        cmd = [sys.executable, "-m", "tools.local_endpoint", "--handler", handler, "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout_s: float = 120.0) -> "LocalEndpoint":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"local endpoint exited: {self.log_path.read_text()[-3000:]}")
            try:
                r = httpx.get(f"{self.endpoint_url}/health", timeout=1)
                if r.status_code == 200 and r.json()["workers"].get("idle", 0) >= 1:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"local endpoint not ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)
        self._log.close()


@pytest.fixture(scope="session")
def fixture_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEndpoint]:
    ep = LocalEndpoint("tests.tools.local_endpoint_handlers:handler",
                       tmp_path_factory.mktemp("ep") / "fixture-endpoint.log", "--workers", "2")
    try:
        yield ep.wait_ready()
    finally:
        ep.stop()


@pytest.fixture(scope="session")
def tiny_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEndpoint]:
    work = tmp_path_factory.mktemp("tiny")
    env = {
        "INFINITETALK_WORK_DIR": str(work / "work"),
        "INFINITETALK_CACHE_DIR": str(work / "cache"),
        # One torch thread: on a busy 2-core test machine the default pool oversubscribes and a
        # 4-step tiny job went from 1.5 s to 30 s.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    ep = LocalEndpoint("worker.handler:handler", work / "tiny-endpoint.log", env=env)
    try:
        yield ep.wait_ready()
    finally:
        ep.stop()


@pytest.fixture(scope="session")
def _proxy(fixture_endpoint: LocalEndpoint) -> Iterator[FaultProxy]:
    p = FaultProxy(fixture_endpoint.url).start()
    yield p
    p.stop()


@pytest.fixture
def proxy(_proxy: FaultProxy) -> FaultProxy:
    _proxy.clear()
    return _proxy


@pytest.fixture(scope="session")
def _tiny_proxy(tiny_endpoint: LocalEndpoint) -> Iterator[FaultProxy]:
    p = FaultProxy(tiny_endpoint.url).start()
    yield p
    p.stop()


@pytest.fixture
def tiny_proxy(_tiny_proxy: FaultProxy) -> FaultProxy:
    _tiny_proxy.clear()
    return _tiny_proxy


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the item, so the browser fixture can screenshot failures."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
