"""A small typed client for a Runpod serverless endpoint (or the project's local stand-in).

Both the CLI and the Gradio UI go through `RunpodEndpointClient`; it speaks plain HTTP with
httpx, so the client side never needs runpod-python (which cannot share an environment with
gradio, see ARCHITECTURE.md section 8).

Retry policy, and why it differs per call:
- status, stream, health and cancel are idempotent: any 429, 5xx or transport failure
  (refused, reset, dropped mid-response, timeout) is retried with exponential backoff.
- run and runsync create a job. A connection that was never established, or a 429/502/503/504
  answer, means the request was not accepted, so those are retried. A connection dropped after
  the request went out is ambiguous (the job may exist), so it is retried only when the caller
  opts in with `retry_unsafe=True` (at-least-once submission, possibly a duplicate job).
- A `Retry-After` header (seconds or an HTTP date) sets the wait when present, capped by
  `max_backoff_s`.
"""
from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

__all__ = [
    "RUNPOD_API_BASE",
    "FINAL_STATES",
    "Progress",
    "JobErrorInfo",
    "JobStatus",
    "ApiError",
    "RetryableHttpError",
    "JobFailed",
    "RunpodEndpointClient",
    "PollPolicy",
    "is_loopback_base",
]

RUNPOD_API_BASE = "https://api.runpod.ai/v2"
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
SAFE_SUBMIT_RETRY_STATUS = frozenset({429, 502, 503, 504})


# ---------------------------------------------------------------------------------------
# Models of what /status returns


class Progress(BaseModel):
    """One of the worker's progress dicts (worker/progress.py); unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    stage: str | None = None
    percent: float | None = None
    message: str | None = None
    chunk: int | None = None
    chunks: int | None = None
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None
    preview: dict[str, Any] | None = None  # the playlist while the job renders (worker/preview/)

    def describe(self) -> str:
        """`stage: message`, with chunk/step counters when the message does not already say them."""
        text = self.stage or "working"
        msg = self.message or ""
        if msg and msg != self.stage:
            text += f": {msg}"
        if "chunk" not in msg and self.chunk is not None and self.chunks:
            text += f" · chunk {self.chunk}/{self.chunks}"
        if "step" not in msg and self.step is not None and self.steps:
            text += f" · step {self.step}/{self.steps}"
        if self.eta_s is not None and self.eta_s > 0:
            text += f" (eta {self.eta_s:.0f} s)"
        return text


class JobErrorInfo(BaseModel):
    """A failed job's error: the worker sends JSON {code, message, hint, details} as a string."""

    model_config = ConfigDict(extra="allow")

    code: str = "E_UNKNOWN"
    message: str = ""
    hint: str | None = None
    details: Any = None

    @property
    def partial_video(self) -> str | None:
        """Where the video made before the job stopped lies (URL or worker path), if it kept one."""
        d = self.details if isinstance(self.details, dict) else {}
        return d.get("partial_video_url") or d.get("partial_video_path")

    @classmethod
    def parse(cls, raw: Any) -> "JobErrorInfo":
        if isinstance(raw, dict):
            data: Any = raw
        else:
            try:
                data = json.loads(raw) if isinstance(raw, str) else None
            except ValueError:
                data = None
        if isinstance(data, dict) and ("code" in data or "message" in data):
            return cls.model_validate({**data, "message": str(data.get("message") or "")})
        return cls(code="E_UNKNOWN", message=str(raw))

    def describe(self) -> str:
        text = f"{self.code}: {self.message}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


class JobStatus(BaseModel):
    """The body of /status (and of /run, /runsync, /cancel, which return a subset)."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    output: Any = None
    error: Any = None
    delayTime: int | None = None
    executionTime: int | None = None
    workerId: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def progress(self) -> Progress | None:
        """The latest progress dict while the job runs (Runpod puts it in `output`)."""
        if self.status == "IN_PROGRESS" and isinstance(self.output, dict):
            return Progress.model_validate(self.output)
        return None

    @property
    def error_info(self) -> JobErrorInfo | None:
        if self.error is not None:
            return JobErrorInfo.parse(self.error)
        if self.status == "COMPLETED" and isinstance(self.output, dict) and "error" in self.output:
            # a handler that returned {"error": ...}; Runpod reports those as FAILED, stand-ins may not
            return JobErrorInfo.parse(self.output["error"])
        if self.status in ("CANCELLED", "TIMED_OUT"):
            return JobErrorInfo(code=f"E_{self.status}", message=f"job {self.status.lower().replace('_', ' ')}")
        return None


# ---------------------------------------------------------------------------------------
# Errors


class ApiError(RuntimeError):
    """A non-retryable HTTP answer (or a retryable one that kept coming)."""

    def __init__(self, status_code: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.body = body


class RetryableHttpError(ApiError):
    def __init__(self, status_code: int, message: str, retry_after_s: float | None, body: Any = None) -> None:
        super().__init__(status_code, message, body)
        self.retry_after_s = retry_after_s


class JobFailed(RuntimeError):
    def __init__(self, status: JobStatus) -> None:
        info = status.error_info or JobErrorInfo(message=status.status)
        super().__init__(info.describe())
        self.status = status
        self.info = info


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_loopback_base(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


# ---------------------------------------------------------------------------------------
# Polling policy


@dataclass(frozen=True)
class PollPolicy:
    """How often to ask /status: every `initial_s` at first, slower as the run grows longer.

    After `grow_after_s` of waiting the interval grows by `factor` per poll up to `max_s`; a 429
    (seen by the retry layer) doubles the interval for the following polls as well.
    """

    initial_s: float = 2.0
    grow_after_s: float = 30.0
    factor: float = 1.25
    max_s: float = 15.0

    def next_interval(self, current: float, elapsed_s: float) -> float:
        if elapsed_s < self.grow_after_s:
            return current
        return min(self.max_s, current * self.factor)


# ---------------------------------------------------------------------------------------
# The client


class RunpodEndpointClient:
    """Calls one endpoint: `https://api.runpod.ai/v2/{endpoint_id}` or a local base URL.

    `base_url` may name the endpoint root itself (`http://127.0.0.1:8000/v2/local`), or just the
    server (`http://127.0.0.1:8000`), in which case `/v2/{endpoint_id}` is appended.
    """

    def __init__(
        self,
        *,
        endpoint_id: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 6,
        max_retry_time_s: float = 120.0,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        retry_unsafe: bool = False,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint_url = self.resolve_endpoint_url(endpoint_id=endpoint_id, base_url=base_url)
        self.endpoint_id = endpoint_id
        self.max_attempts = max_attempts
        self.max_retry_time_s = max_retry_time_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.retry_unsafe = retry_unsafe
        self.sleep = sleep
        self.throttled = 0  # count of 429 answers seen; the poll loop slows down on them
        headers = {"Accept": "application/json", "User-Agent": "infinitetalk-client/0.1"}
        if api_key:
            # Runpod takes the bare key or "Bearer <key>"; the bearer form is what its docs show.
            headers["Authorization"] = api_key if api_key.lower().startswith("bearer ") else f"Bearer {api_key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            transport=transport,
            follow_redirects=False,
        )

    @staticmethod
    def resolve_endpoint_url(*, endpoint_id: str | None, base_url: str | None) -> str:
        if base_url:
            base = base_url.strip().rstrip("/")
            if urlsplit(base).scheme not in ("http", "https"):
                raise ValueError(f"base URL must be http(s)://…, got {base_url!r}")
            path = urlsplit(base).path.rstrip("/")
            segments = [s for s in path.split("/") if s]
            if "v2" in segments and segments[-1] != "v2":
                return base  # already .../v2/{endpoint_id}
            if not endpoint_id:
                endpoint_id = "local"
            if segments and segments[-1] == "v2":
                return f"{base}/{endpoint_id}"
            return f"{base}/v2/{endpoint_id}"
        if not endpoint_id:
            raise ValueError("give an endpoint id (Runpod) or a base URL (local worker)")
        return f"{RUNPOD_API_BASE}/{endpoint_id}"

    @property
    def is_local(self) -> bool:
        return is_loopback_base(self.endpoint_url)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RunpodEndpointClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport with retries -----------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = min(self.max_backoff_s, self.min_backoff_s * (2 ** (state.attempt_number - 1)))
        if isinstance(exc, RetryableHttpError) and exc.retry_after_s is not None:
            return min(self.max_backoff_s, exc.retry_after_s)
        return backoff

    def _request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
                 submit: bool = False, timeout_s: float | None = None) -> Any:
        url = f"{self.endpoint_url}/{path.lstrip('/')}"

        def should_retry(exc: BaseException) -> bool:
            if isinstance(exc, RetryableHttpError):
                return not submit or exc.status_code in SAFE_SUBMIT_RETRY_STATUS or self.retry_unsafe
            if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
                return True  # the request never left
            if isinstance(exc, httpx.TransportError):
                return not submit or self.retry_unsafe
            return False

        try:  # NaN/Infinity would go out as tokens no JSON parser but Python's accepts
            content = None if body is None else json.dumps(body, allow_nan=False).encode()
        except ValueError:
            raise ValueError("the job holds a number that JSON cannot carry (NaN or infinity)") from None

        def once() -> Any:
            kw: dict[str, Any] = {"params": params}
            if content is not None:
                kw["content"] = content
                kw["headers"] = {"Content-Type": "application/json"}
            if timeout_s is not None:
                kw["timeout"] = httpx.Timeout(timeout_s, connect=10.0)
            resp = self._http.request(method, url, **kw)
            return self._decode(resp)

        retrying = Retrying(
            retry=retry_if_exception(should_retry),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_retry_time_s),
            wait=self._wait,
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(once)

    def _decode(self, resp: httpx.Response) -> Any:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code < 400:
            if data is None:
                raise ApiError(resp.status_code, "response is not JSON", resp.text[:500])
            return data
        message = data.get("error") if isinstance(data, dict) and data.get("error") else resp.text[:300] or resp.reason_phrase
        if resp.status_code == 429:
            self.throttled += 1
        if resp.status_code in RETRY_STATUS:
            raise RetryableHttpError(resp.status_code, str(message), parse_retry_after(resp.headers.get("Retry-After")), data)
        if resp.status_code == 401:
            message = f"{message} (check the API key)"
        raise ApiError(resp.status_code, str(message), data)

    # -- the endpoint API -----------------------------------------------------------------

    def run(self, job_input: dict[str, Any], *, webhook: str | None = None,
            policy: dict[str, Any] | None = None) -> JobStatus:
        """POST /run: queue the job, return at once with its id."""
        return JobStatus.model_validate(self._request("POST", "run", body=self._body(job_input, webhook, policy), submit=True))

    def runsync(self, job_input: dict[str, Any], *, wait_s: float = 90.0, webhook: str | None = None,
                policy: dict[str, Any] | None = None) -> JobStatus:
        """POST /runsync: wait up to `wait_s` for the result; a job still running then is returned as is."""
        wait_ms = int(min(300.0, max(1.0, wait_s)) * 1000)
        data = self._request("POST", "runsync", body=self._body(job_input, webhook, policy),
                             params={"wait": wait_ms}, submit=True, timeout_s=wait_ms / 1000 + 30)
        return JobStatus.model_validate(data)

    def status(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._request("GET", f"status/{job_id}"))

    def stream(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"stream/{job_id}")

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._request("POST", f"cancel/{job_id}"))

    def health(self) -> dict[str, Any]:
        return self._request("GET", "health")

    @staticmethod
    def _body(job_input: dict[str, Any], webhook: str | None, policy: dict[str, Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"input": job_input}
        if webhook:
            body["webhook"] = webhook
        if policy:
            body["policy"] = policy
        return body

    # -- following a job ------------------------------------------------------------------

    def poll(self, job_id: str, *, policy: PollPolicy = PollPolicy(), timeout_s: float | None = None,
             should_stop: Callable[[], bool] | None = None) -> Iterator[JobStatus]:
        """Yield /status answers until the job is final (the last one yielded is final).

        Waits `policy.initial_s` between polls, longer as the run grows and after 429s.
        Stops early (without yielding a final state) when `should_stop()` turns true.
        """
        start = time.monotonic()
        interval = policy.initial_s
        while True:
            throttled_before = self.throttled
            st = self.status(job_id)
            yield st
            if st.final:
                return
            elapsed = time.monotonic() - start
            if timeout_s is not None and elapsed > timeout_s:
                raise TimeoutError(f"job {job_id} not finished after {timeout_s:.0f} s (last status {st.status})")
            if self.throttled > throttled_before:
                interval = min(policy.max_s, interval * 2)
            interval = policy.next_interval(interval, elapsed)
            if should_stop is not None:
                deadline = time.monotonic() + interval
                while time.monotonic() < deadline:
                    if should_stop():
                        return
                    self.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            else:
                self.sleep(interval)

    def wait(self, job_id: str, *, policy: PollPolicy = PollPolicy(), timeout_s: float | None = None,
             on_status: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Follow a job to its final state; raise JobFailed unless it COMPLETED."""
        last: JobStatus | None = None
        for last in self.poll(job_id, policy=policy, timeout_s=timeout_s):
            if on_status is not None:
                on_status(last)
        assert last is not None
        if last.status != "COMPLETED" or last.error_info is not None:
            raise JobFailed(last)
        return last
