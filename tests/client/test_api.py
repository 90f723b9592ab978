"""client/api.py against the local endpoint (fixture handlers), directly and through the fault proxy."""
from __future__ import annotations

import time

import httpx
import pytest

from client.api import (
    ApiError,
    JobErrorInfo,
    JobFailed,
    PollPolicy,
    RunpodEndpointClient,
    parse_retry_after,
)
from tests.client.conftest import ENDPOINT_ID
from tests.client.faultproxy import Fault, FaultProxy

FAST = PollPolicy(initial_s=0.2, grow_after_s=60)


def make(url: str, **kw) -> RunpodEndpointClient:
    kw.setdefault("min_backoff_s", 0.05)
    kw.setdefault("max_backoff_s", 2.0)
    return RunpodEndpointClient(base_url=url, endpoint_id=ENDPOINT_ID, **kw)


def test_endpoint_url_forms() -> None:
    r = RunpodEndpointClient.resolve_endpoint_url
    assert r(endpoint_id="abc", base_url=None) == "https://api.runpod.ai/v2/abc"
    assert r(endpoint_id=None, base_url="http://127.0.0.1:8000") == "http://127.0.0.1:8000/v2/local"
    assert r(endpoint_id="e1", base_url="http://127.0.0.1:8000/") == "http://127.0.0.1:8000/v2/e1"
    assert r(endpoint_id="e1", base_url="http://h:1/v2") == "http://h:1/v2/e1"
    assert r(endpoint_id="e1", base_url="http://h:1/v2/other") == "http://h:1/v2/other"
    with pytest.raises(ValueError):
        r(endpoint_id=None, base_url=None)
    with pytest.raises(ValueError):
        r(endpoint_id=None, base_url="ftp://x")
    assert RunpodEndpointClient(base_url="http://localhost:1").is_local
    assert not RunpodEndpointClient(endpoint_id="x", api_key="k").is_local


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_error_info_parsing() -> None:
    info = JobErrorInfo.parse('{"code":"E_OOM","message":"out of memory","hint":"smaller size","details":{"a":1}}')
    assert (info.code, info.hint) == ("E_OOM", "smaller size")
    assert "hint: smaller size" in info.describe()
    plain = JobErrorInfo.parse("handler exploded")
    assert plain.code == "E_UNKNOWN" and plain.message == "handler exploded"


def test_poll_policy_backs_off_after_grow_time() -> None:
    p = PollPolicy(initial_s=2, grow_after_s=30, factor=1.5, max_s=10)
    assert p.next_interval(2, 10) == 2
    assert p.next_interval(2, 31) == 3
    assert p.next_interval(9, 100) == 10


def test_run_and_follow_progress(fixture_endpoint) -> None:
    with make(fixture_endpoint.url) as c:
        assert c.health()["workers"]["idle"] >= 1
        first = c.run({"mode": "progress", "steps": 4, "step_s": 0.3})
        assert first.id and first.status in ("IN_QUEUE", "IN_PROGRESS")
        seen = []
        final = c.wait(first.id, policy=FAST, on_status=seen.append)
    assert final.status == "COMPLETED" and final.output == {"done": 4}
    percents = [s.progress.percent for s in seen if s.progress is not None]
    assert percents and percents == sorted(percents)
    assert seen[-1].final


def test_runsync_returns_the_output(fixture_endpoint) -> None:
    with make(fixture_endpoint.url) as c:
        st = c.runsync({"mode": "echo", "value": 7}, wait_s=20)
    assert st.status == "COMPLETED" and st.output["echo"] == 7


def test_failed_job_raises_with_error_info(fixture_endpoint) -> None:
    with make(fixture_endpoint.url) as c:
        job = c.run({"mode": "raise", "message": "kaboom"})
        with pytest.raises(JobFailed) as exc:
            c.wait(job.id, policy=FAST, timeout_s=30)
    assert exc.value.status.status == "FAILED"
    assert "kaboom" in exc.value.info.message


def test_cancel_a_running_job(fixture_endpoint) -> None:
    with make(fixture_endpoint.url) as c:
        job = c.run({"mode": "sleep", "seconds": 20})
        time.sleep(0.5)
        assert c.cancel(job.id).status == "CANCELLED"
        assert c.status(job.id).status == "CANCELLED"


def test_a_job_with_nan_is_refused_before_sending(fixture_endpoint) -> None:
    with RunpodEndpointClient(base_url=fixture_endpoint.url, endpoint_id=ENDPOINT_ID) as c:
        for bad in (float("nan"), float("inf"), [1.0, float("-inf")]):
            with pytest.raises(ValueError, match="NaN or infinity"):
                c.run({"mode": "echo", "value": bad})
        assert c.runsync({"mode": "echo", "value": 1e308}).output is not None  # finite large numbers still go


def test_unknown_job_is_a_plain_api_error(fixture_endpoint) -> None:
    with make(fixture_endpoint.url) as c:
        with pytest.raises(ApiError) as exc:
            c.status("no-such-job")
    assert exc.value.status_code == 404


def test_429_on_run_is_retried_honoring_retry_after(proxy: FaultProxy) -> None:
    proxy.add("/run", Fault.throttle(retry_after="1"), times=2)
    with make(proxy.url) as c:
        t0 = time.monotonic()
        job = c.run({"mode": "echo", "value": 1})
        took = time.monotonic() - t0
        assert c.throttled == 2
        assert c.wait(job.id, policy=FAST, timeout_s=30).output["echo"] == 1
    assert took >= 1.9  # two Retry-After: 1 waits, not the 0.05 s backoff
    assert proxy.count("/run", "throttle") == 2 and proxy.count("/run", "pass") == 1


def test_throttled_polls_slow_down(proxy: FaultProxy) -> None:
    proxy.add("/status/", Fault.throttle(retry_after="0"), times=2)
    slept: list[float] = []
    with make(proxy.url, sleep=lambda s: (slept.append(s), time.sleep(s))) as c:
        job = c.run({"mode": "sleep", "seconds": 1.5})
        statuses = list(c.poll(job.id, policy=PollPolicy(initial_s=0.2, grow_after_s=60, max_s=5)))
    assert statuses[-1].status == "COMPLETED"
    poll_waits = [s for s in slept if s >= 0.2]
    assert poll_waits and max(poll_waits) >= 0.4  # interval doubled after the 429s


def test_dropped_status_connections_are_retried(proxy: FaultProxy) -> None:
    proxy.add("/status/", Fault.drop(), times=3)
    with make(proxy.url) as c:
        job = c.run({"mode": "progress", "steps": 2, "step_s": 0.2})
        final = c.wait(job.id, policy=FAST, timeout_s=30)
    assert final.output == {"done": 2}
    assert proxy.count("/status/", "drop") == 3


def test_5xx_is_retried_then_gives_up(proxy: FaultProxy) -> None:
    proxy.add("/health", Fault.error(503), times=10)
    with make(proxy.url, max_attempts=3) as c:
        with pytest.raises(ApiError) as exc:
            c.health()
    assert exc.value.status_code == 503
    assert proxy.count("/health") == 3


def test_run_dropped_after_forwarding_is_not_resubmitted_by_default(proxy: FaultProxy) -> None:
    proxy.add("/run", Fault.drop_after_forward())
    with make(proxy.url) as c:
        with pytest.raises(httpx.TransportError):
            c.run({"mode": "echo", "value": 2})
    assert proxy.count("/run") == 1  # one attempt: the job may exist, so no blind retry
    proxy.add("/run", Fault.drop())
    with make(proxy.url, retry_unsafe=True) as c:
        job = c.run({"mode": "echo", "value": 3})
        assert c.wait(job.id, policy=FAST, timeout_s=30).output["echo"] == 3
    assert proxy.count("/run") == 3


def test_connection_refused_is_retried_then_raised() -> None:
    from tests.worker.conftest import free_port

    slept: list[float] = []
    with make(f"http://127.0.0.1:{free_port()}", max_attempts=3, sleep=slept.append) as c:
        with pytest.raises(httpx.ConnectError):
            c.run({"mode": "echo"})
    assert len(slept) == 2 and slept[1] > slept[0]  # exponential backoff between attempts


def test_stream_route(fixture_endpoint) -> None:
    with make(fixture_endpoint.url) as c:
        job = c.run({"mode": "echo", "value": 5})
        body = c.stream(job.id)
    assert body["id"] == job.id and isinstance(body["stream"], list)


def test_api_key_is_sent_as_bearer_and_401_is_not_retried(tmp_path) -> None:
    from tests.client.conftest import LocalEndpoint

    ep = LocalEndpoint("tests.tools.local_endpoint_handlers:handler", tmp_path / "auth.log", "--api-key", "s3cret")
    try:
        deadline = time.monotonic() + 60
        while True:  # wait_ready probes without a key, so probe here with one
            try:
                if httpx.get(f"{ep.endpoint_url}/health", headers={"Authorization": "s3cret"}, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and ep.proc.poll() is None
            time.sleep(0.1)
        slept: list[float] = []
        with make(ep.url, api_key="wrong", sleep=slept.append) as c:
            with pytest.raises(ApiError) as exc:
                c.run({"mode": "echo"})
        assert exc.value.status_code == 401 and "API key" in str(exc.value) and slept == []
        with make(ep.url, api_key="s3cret") as c:
            assert c.runsync({"mode": "echo", "value": 1}, wait_s=20).output["echo"] == 1
    finally:
        ep.stop()
