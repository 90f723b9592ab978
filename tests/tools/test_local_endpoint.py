"""The local endpoint server, driven the way users drive Runpod: through runpod-python's Endpoint client.

The server runs as a real subprocess (uvicorn on a free loopback port) with real worker processes.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import runpod

from tests.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLERS = "tests.tools.local_endpoint_handlers"
ENDPOINT_ID = "local-test"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, handler: str, tmp: Path, *extra: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}/v2"
        self.log_path = tmp / f"server-{self.port}.log"
        self._log = self.log_path.open("w")
        cmd = [sys.executable, "-m", "tools.local_endpoint", "--handler", handler, "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ})
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            try:
                r = requests.get(f"{self.base}/{ENDPOINT_ID}/health", headers={"Authorization": "test"}, timeout=1)
                workers = r.json()["workers"] if r.ok else {}
                if workers.get("idle", 0) >= 1 or workers.get("unhealthy", 0) >= 1:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready: {self.log_path.read_text()}")

    def endpoint(self, api_key: str = "test") -> runpod.Endpoint:
        runpod.api_key = api_key
        runpod.endpoint_url_base = self.base
        return runpod.Endpoint(ENDPOINT_ID)

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(f"{HANDLERS}:handler", tmp_path_factory.mktemp("srv"), "--webhook-retry-delay", "0.2",
                 "--webhook-allow", "127.0.0.1/32")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(f"{HANDLERS}:stream_handler", tmp_path_factory.mktemp("srv"), "--api-key", "test")
    yield srv
    srv.stop()


@pytest.fixture
def endpoint(server: Server) -> runpod.Endpoint:
    return server.endpoint()


def raw_status(ep: runpod.Endpoint, job_id: str) -> dict[str, Any]:
    return ep.rp_client.get(f"{ep.endpoint_id}/status/{job_id}")


def wait_for(ep: runpod.Endpoint, job_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = raw_status(ep, job_id)
        if pred(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached; last status {body}")
        time.sleep(0.05)


def wait_final(ep: runpod.Endpoint, job_id: str, timeout: float = 15) -> dict[str, Any]:
    return wait_for(ep, job_id, lambda b: b["status"] in FINAL, timeout)


def wait_idle(ep: runpod.Endpoint, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = ep.health()
        if health["workers"]["idle"] >= 1 and health["jobs"]["inProgress"] == 0:
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"no idle worker: {health}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- basic operations
def test_run_status_output(endpoint: runpod.Endpoint) -> None:
    job = endpoint.run({"mode": "echo", "value": 42})
    body = wait_final(endpoint, job.job_id)
    assert body["status"] == "COMPLETED"
    assert body["id"] == job.job_id
    assert isinstance(body["delayTime"], int) and isinstance(body["executionTime"], int)
    assert job.status() == "COMPLETED"
    assert job.output() == {"echo": 42, "job_id": job.job_id}


def test_run_sync(endpoint: runpod.Endpoint) -> None:
    assert endpoint.run_sync({"mode": "echo", "value": "hi"}, timeout=30)["echo"] == "hi"
    raw = endpoint.rp_client.post(f"{ENDPOINT_ID}/runsync", {"input": {"mode": "echo", "value": 1}})
    assert raw["status"] == "COMPLETED" and raw["id"].startswith("sync-") and raw["output"]["echo"] == 1


def test_unknown_job_is_404(endpoint: runpod.Endpoint) -> None:
    with pytest.raises(requests.HTTPError) as err:
        raw_status(endpoint, "no-such-job")
    assert err.value.response.status_code == 404


def test_progress_visible_in_status_while_in_progress(endpoint: runpod.Endpoint) -> None:
    job = endpoint.run({"mode": "progress", "steps": 4, "step_s": 0.3})
    seen: list[Any] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        body = raw_status(endpoint, job.job_id)
        if body["status"] == "IN_PROGRESS" and "output" in body:
            seen.append(body["output"])
        if body["status"] in FINAL:
            break
        time.sleep(0.05)
    assert body["status"] == "COMPLETED" and body["output"] == {"done": 4}
    assert seen, "no progress payload was visible while the job ran"
    assert all(p["stage"] == "sampling" for p in seen)
    assert len({p["step"] for p in seen}) >= 2  # the latest update replaces the previous one


def test_failed_with_error_string(endpoint: runpod.Endpoint) -> None:
    job = endpoint.run({"mode": "fail_return", "message": "bad input"})
    body = wait_final(endpoint, job.job_id)
    assert body["status"] == "FAILED" and body["error"] == "bad input"
    assert job.status() == "FAILED"

    job = endpoint.run({"mode": "raise", "message": "kaboom"})
    body = wait_final(endpoint, job.job_id)
    assert body["status"] == "FAILED" and isinstance(body["error"], str)
    assert json.loads(body["error"])["error_message"] == "kaboom"


def test_health_shape(endpoint: runpod.Endpoint) -> None:
    health = wait_idle(endpoint)
    assert set(health["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert {"idle", "running"} <= set(health["workers"])
    assert health["jobs"]["completed"] >= 1 and health["jobs"]["failed"] >= 1


# --------------------------------------------------------------------------- cancel, retry, purge
def test_cancel_in_progress_and_queued(endpoint: runpod.Endpoint) -> None:
    wait_idle(endpoint)
    running = endpoint.run({"mode": "sleep", "seconds": 30})
    queued = endpoint.run({"mode": "echo", "value": "never"})
    wait_for(endpoint, running.job_id, lambda b: b["status"] == "IN_PROGRESS")
    assert queued.cancel() == {"id": queued.job_id, "status": "CANCELLED"}
    assert running.cancel() == {"id": running.job_id, "status": "CANCELLED"}
    assert raw_status(endpoint, running.job_id)["status"] == "CANCELLED"
    assert "output" not in raw_status(endpoint, queued.job_id)
    # the killed worker is replaced and the endpoint keeps serving
    assert endpoint.run_sync({"mode": "echo", "value": "after"}, timeout=30)["echo"] == "after"


def test_retry_requeues_same_id(endpoint: runpod.Endpoint, tmp_path: Path) -> None:
    job = endpoint.run({"mode": "fail_once", "marker": str(tmp_path / "marker")})
    assert wait_final(endpoint, job.job_id)["status"] == "FAILED"
    retried_before = endpoint.health()["jobs"]["retried"]
    assert endpoint.rp_client.post(f"{ENDPOINT_ID}/retry/{job.job_id}", None) == {"id": job.job_id, "status": "IN_QUEUE"}
    body = wait_final(endpoint, job.job_id)
    assert body["status"] == "COMPLETED" and body["output"] == {"attempt": "second"} and body["retries"] == 1
    assert "error" not in body
    assert endpoint.health()["jobs"]["retried"] == retried_before + 1
    with pytest.raises(requests.HTTPError) as err:  # COMPLETED jobs cannot be retried
        endpoint.rp_client.post(f"{ENDPOINT_ID}/retry/{job.job_id}", None)
    assert err.value.response.status_code == 400
    cancelled = endpoint.run({"mode": "sleep", "seconds": 30})
    cancelled.cancel()
    with pytest.raises(requests.HTTPError) as err:  # nor CANCELLED ones (Runpod: FAILED or TIMED_OUT only)
        endpoint.rp_client.post(f"{ENDPOINT_ID}/retry/{cancelled.job_id}", None)
    assert err.value.response.status_code == 400 and "CANCELLED" in err.value.response.text


def test_purge_queue(endpoint: runpod.Endpoint) -> None:
    wait_idle(endpoint)
    busy = endpoint.run({"mode": "sleep", "seconds": 1})
    wait_for(endpoint, busy.job_id, lambda b: b["status"] == "IN_PROGRESS")
    waiting = [endpoint.run({"mode": "echo", "value": i}) for i in range(3)]
    assert endpoint.health()["jobs"]["inQueue"] == 3
    assert endpoint.purge_queue() == {"removed": 3, "status": "completed"}
    assert endpoint.health()["jobs"]["inQueue"] == 0
    assert {raw_status(endpoint, j.job_id)["status"] for j in waiting} == {"CANCELLED"}
    assert wait_final(endpoint, busy.job_id)["status"] == "COMPLETED"  # purge leaves running jobs alone


# --------------------------------------------------------------------------- policies
def test_execution_timeout_kills_and_replaces_worker(endpoint: runpod.Endpoint) -> None:
    wait_idle(endpoint)
    before = endpoint.run_sync({"mode": "pid"}, timeout=30)["pid"]
    job = endpoint.run({"input": {"mode": "sleep", "seconds": 30}, "policy": {"executionTimeout": 800}})
    started = time.monotonic()
    body = wait_final(endpoint, job.job_id)
    assert body["status"] == "TIMED_OUT"
    assert time.monotonic() - started < 5
    assert job.status() == "TIMED_OUT"
    after = endpoint.run_sync({"mode": "pid"}, timeout=30)["pid"]
    assert after != before


def test_ttl_expires_queued_job(endpoint: runpod.Endpoint) -> None:
    wait_idle(endpoint)
    busy = endpoint.run({"mode": "sleep", "seconds": 1.2})
    wait_for(endpoint, busy.job_id, lambda b: b["status"] == "IN_PROGRESS")
    doomed = endpoint.run({"input": {"mode": "echo", "value": "late"}, "policy": {"ttl": 300}})
    body = wait_final(endpoint, doomed.job_id)
    assert body["status"] == "TIMED_OUT"
    assert "delayTime" not in body and "output" not in body  # never picked up
    assert wait_final(endpoint, busy.job_id)["status"] == "COMPLETED"


# --------------------------------------------------------------------------- webhook
class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    fail_first = True

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(body)
        code = 500 if type(self).fail_first and len(type(self).received) == 1 else 200
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_posts_final_status_with_retries(endpoint: runpod.Endpoint) -> None:
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
        job = endpoint.run({"input": {"mode": "echo", "value": "hooked"}, "webhook": url})
        final = wait_final(endpoint, job.job_id)
        deadline = time.monotonic() + 10
        while len(_Hook.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # room for a wrongful third delivery to show up
        assert len(_Hook.received) == 2  # the first answer was a 500, so it was sent again
        assert _Hook.received[0] == _Hook.received[1] == final
        assert final["status"] == "COMPLETED" and final["output"]["echo"] == "hooked"
    finally:
        hook.shutdown()


# --------------------------------------------------------------------------- refresh_worker
def test_refresh_worker_restarts_process(endpoint: runpod.Endpoint) -> None:
    wait_idle(endpoint)
    first = endpoint.run_sync({"mode": "pid"}, timeout=30)["pid"]
    assert endpoint.run_sync({"mode": "pid"}, timeout=30)["pid"] == first  # warm worker is reused
    out = endpoint.run_sync({"mode": "pid", "refresh": True}, timeout=30)
    assert out == {"pid": first}  # the flag is consumed, not returned
    assert endpoint.run_sync({"mode": "pid"}, timeout=30)["pid"] != first


# --------------------------------------------------------------------------- generator handler + auth
def test_stream_yields_generator_pieces(stream_server: Server) -> None:
    ep = stream_server.endpoint()
    job = ep.run({"pieces": 3, "piece_s": 0.1})
    assert list(job.stream()) == [{"piece": 0}, {"piece": 1}, {"piece": 2}]
    assert job.status() == "COMPLETED"


def test_api_key_required_when_configured(stream_server: Server) -> None:
    assert "jobs" in stream_server.endpoint("test").health()
    with pytest.raises(RuntimeError, match="401"):
        stream_server.endpoint("wrong").health()
    r = requests.get(f"{stream_server.base}/{ENDPOINT_ID}/health", headers={"Authorization": "Bearer test"}, timeout=5)
    assert r.status_code == 200


def test_handler_that_cannot_import_leaves_jobs_queued(tmp_path: Path) -> None:
    srv = Server("tests.worker.no_such_module:handler", tmp_path)
    try:
        ep = srv.endpoint()
        health = ep.health()
        assert health["workers"]["unhealthy"] == 1 and health["workers"]["idle"] == 0
        job = ep.run({"mode": "echo"})
        time.sleep(0.3)
        assert job.status() == "IN_QUEUE"  # as on Runpod: no healthy worker, the job waits
        assert "handler_import_failed" in srv.log_path.read_text()
    finally:
        srv.stop()


def test_several_workers_run_jobs_side_by_side(tmp_path: Path) -> None:
    srv = Server(f"{HANDLERS}:handler", tmp_path, "--workers", "2")
    try:
        ep = srv.endpoint()
        deadline = time.monotonic() + 20
        while ep.health()["workers"]["idle"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        jobs = [ep.run({"mode": "sleep", "seconds": 1}) for _ in range(2)]
        for job in jobs:
            assert wait_final(ep, job.job_id)["status"] == "COMPLETED"
        assert time.monotonic() - started < 1.9
        assert len({raw_status(ep, j.job_id)["workerId"] for j in jobs}) == 2
    finally:
        srv.stop()


# --------------------------------------------------------------------------- hostile requests (issue 13)
from hypothesis import HealthCheck, given, settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tools.local_endpoint.limits import MAX_JSON_DEPTH, RUN_MAX_BYTES, RUNSYNC_MAX_BYTES  # noqa: E402

HYP = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def _nested(depth: int) -> str:
    """{"input": {"mode": "echo", "value": [[...]]}} with `depth` levels of containers in all."""
    return '{"input": {"mode": "echo", "value": ' + "[" * (depth - 2) + "]" * (depth - 2) + "}}"


def _health_within(base: str, seconds: float = 1.0) -> None:
    started = time.monotonic()
    r = requests.get(f"{base}/{ENDPOINT_ID}/health", headers={"Authorization": "test"}, timeout=seconds)
    assert r.ok and time.monotonic() - started < seconds


@hsettings(max_examples=40, **HYP)
@given(depth=st.one_of(st.integers(3, MAX_JSON_DEPTH + 4), st.integers(MAX_JSON_DEPTH, 100_000)))
def test_nesting_depth_is_limited_and_refused_fast(server: Server, depth: int) -> None:
    started = time.monotonic()
    r = requests.post(f"{server.base}/{ENDPOINT_ID}/run", data=_nested(depth), timeout=10,
                      headers={"Authorization": "test", "Content-Type": "application/json"})
    took = time.monotonic() - started
    if depth <= MAX_JSON_DEPTH:
        assert r.status_code == 200 and r.json()["status"] == "IN_QUEUE", r.text
    else:
        assert r.status_code == 400 and "nests deeper" in r.json()["error"], r.text[:200]
        assert took < 1.0, took
    _health_within(server.base)


@hsettings(max_examples=10, **HYP)
@given(route=st.sampled_from(["run", "runsync"]), over=st.sampled_from([-64, 1, 1000, 3_000_000]))
def test_body_size_is_limited_per_route(server: Server, route: str, over: int) -> None:
    limit = RUN_MAX_BYTES if route == "run" else RUNSYNC_MAX_BYTES
    shell = '{"input": {"mode": "echo", "value": ""}}'
    body = shell.replace('""', '"' + "x" * (limit + over - len(shell)) + '"')
    assert len(body) == limit + over
    r = requests.post(f"{server.base}/{ENDPOINT_ID}/{route}?wait=1000", data=body, timeout=30,
                      headers={"Authorization": "test", "Content-Type": "application/json"})
    if over > 0:
        assert r.status_code == 413, r.text[:200]
    else:
        assert r.status_code == 200, r.text[:200]
    _health_within(server.base)


@hsettings(max_examples=12, **HYP)
@given(token=st.sampled_from(["NaN", "Infinity", "-Infinity"]), where=st.sampled_from(["value", "list", "key"]),
       route=st.sampled_from(["run", "runsync"]))
def test_non_json_number_tokens_are_refused(server: Server, token: str, where: str, route: str) -> None:
    """NaN/Infinity are not JSON: Python's parser takes them, Runpod's and the worker's do not."""
    value = {"value": token, "list": f"[1, {token}]", "key": '{"a": ' + token + "}"}[where]
    body = '{"input": {"mode": "echo", "value": ' + value + "}}"
    r = requests.post(f"{server.base}/{ENDPOINT_ID}/{route}?wait=1000", data=body, timeout=10,
                      headers={"Authorization": "test", "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"], r.text[:200]
    ok = requests.post(f"{server.base}/{ENDPOINT_ID}/{route}?wait=1000", data=body.replace(token, "1.5e308"),
                       timeout=10, headers={"Authorization": "test", "Content-Type": "application/json"})
    assert ok.status_code == 200, ok.text[:200]


def test_server_log_holds_no_payloads_or_locals(server: Server) -> None:
    requests.post(f"{server.base}/{ENDPOINT_ID}/run", data=_nested(900), timeout=10, headers={"Authorization": "test"})
    log = server.log_path.read_text()
    assert "[[[[[[[[" not in log and "locals" not in log.lower()
    assert server.log_path.stat().st_size < 1_000_000


@pytest.mark.parametrize("hook", ["http://169.254.169.254/latest/meta-data", "http://10.0.0.7/hook", "http://[::1]:9/x",
                                  "https://localhost/x", "http://0x7f000001/x", "file:///etc/passwd", "https://a..b/x",
                                  "http://" + "a" * 70 + ".com/"])
def test_webhook_urls_pass_the_ssrf_guard(stream_server: Server, hook: str) -> None:
    r = requests.post(f"{stream_server.base}/{ENDPOINT_ID}/run", json={"input": {"pieces": 1}, "webhook": hook},
                      headers={"Authorization": "test"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"].startswith("webhook refused"), r.text


def test_a_job_that_cannot_be_sent_to_a_worker_leaves_the_worker_idle() -> None:
    import multiprocessing

    from tools.local_endpoint.pool import UnsendableJob, WorkerHandle, WorkerPool, WorkerState
    from tools.local_endpoint.settings import ServerSettings

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    worker = WorkerHandle(id="w", process=ctx.Process(target=print), conn=parent, state=WorkerState.IDLE)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(UnsendableJob):
        WorkerPool(ServerSettings(), "t").assign(worker, {"id": "j", "input": deep})
    assert worker.state is WorkerState.IDLE and worker.job_id is None and not child.poll(0)
    WorkerPool(ServerSettings(), "t").assign(worker, {"id": "k", "input": {"ok": 1}})
    assert child.recv() == {"id": "k", "input": {"ok": 1}}  # the pipe is intact


def test_non_loopback_bind_without_api_key_is_refused() -> None:
    port = _free_port()
    r = subprocess.run([sys.executable, "-m", "tools.local_endpoint", "--host", "0.0.0.0", "--port", str(port)],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "LOCAL_ENDPOINT_API_KEY"})
    assert r.returncode == 2 and "--api-key" in r.stderr
