"""One interface over Runpod's two management APIs.

The dynamic providers in `infra.runpod_provider` speak only to `RunpodApi`; which wire protocol
is used is a stack setting (`infinitetalk:runpodApi`: `rest`, the default, or `graphql`, which
Runpod retires in early 2027). Specs are what we ask for, states are what Runpod reports, in the
same units on both protocols (GB, seconds), so drift compares like with like.
"""
from __future__ import annotations

import abc
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

import httpx

from infra.runpod_api.errors import (
    RunpodApiError,
    RunpodRateLimitError,
    RunpodServerError,
    error_for_status,
    redact,
)

DEFAULT_REST_URL = "https://api.runpod.io"
DEFAULT_GRAPHQL_URL = "https://api.runpod.io/graphql"
# Job submission lives on a different host from management.
JOBS_BASE_URL = "https://api.runpod.ai/v2"

API_MODES = ("rest", "graphql")


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    size_gb: int
    datacenter: str


@dataclass(frozen=True)
class VolumeState(VolumeSpec):
    id: str = ""


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    image: str
    container_disk_gb: int
    env: Mapping[str, str] = field(default_factory=dict)
    # id of a container registry credential (private images); None for public images
    registry_id: Optional[str] = None

    def key_set(self) -> frozenset[str]:
        return frozenset(self.env)


@dataclass(frozen=True)
class TemplateState(TemplateSpec):
    id: str = ""


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    template_id: str
    gpu_pools: tuple[str, ...]
    gpu_count: int = 1
    workers_min: int = 0
    workers_max: int = 3
    idle_timeout_s: int = 5
    scaler_type: str = "QUEUE_DELAY"
    # QUEUE_DELAY takes seconds as a float (REST: `queueDelay` is a number); REQUEST_COUNT an integer
    scaler_value: float = 4
    # FLASHBOOT_MODES: REST reports PRIORITY_FLASHBOOT too, which must read back as itself (drift)
    flashboot: str = "FLASHBOOT"
    execution_timeout_s: int = 1800
    network_volume_id: Optional[str] = None
    datacenters: tuple[str, ...] = ()
    # lowest CUDA the image needs ("12.8"); None accepts any driver
    min_cuda_version: Optional[str] = None


FLASHBOOT_MODES = ("OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT")


def flashboot_mode(value: object) -> str:
    """conf's `deploy.flashboot` is a bool; the APIs speak an enum."""
    if isinstance(value, bool):
        return "FLASHBOOT" if value else "OFF"
    if value in FLASHBOOT_MODES:
        return str(value)
    raise ValueError(f"flashboot must be a bool or one of {FLASHBOOT_MODES}, got {value!r}")


@dataclass(frozen=True)
class EndpointState(EndpointSpec):
    id: str = ""
    run_url: str = ""
    # what the endpoint's workers actually run (the template applied to it), read back for drift
    image: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SecretState:
    id: str
    name: str


def secret_reference(name: str) -> str:
    """How a template's env refers to a Runpod secret; Runpod substitutes the value at worker start."""
    return "{{ RUNPOD_SECRET_" + name + " }}"


def run_url_for(endpoint_id: str) -> str:
    return f"{JOBS_BASE_URL}/{endpoint_id}/run"


class RunpodApi(abc.ABC):
    """CRUD for the three resources we manage. `get_*` returns None when the resource is gone."""

    mode: str = ""

    @abc.abstractmethod
    def create_volume(self, spec: VolumeSpec) -> VolumeState: ...

    @abc.abstractmethod
    def get_volume(self, volume_id: str) -> Optional[VolumeState]: ...

    @abc.abstractmethod
    def update_volume(self, volume_id: str, *, name: Optional[str] = None, size_gb: Optional[int] = None) -> VolumeState: ...

    @abc.abstractmethod
    def delete_volume(self, volume_id: str) -> None: ...

    @abc.abstractmethod
    def create_template(self, spec: TemplateSpec) -> TemplateState: ...

    @abc.abstractmethod
    def get_template(self, template_id: str) -> Optional[TemplateState]: ...

    @abc.abstractmethod
    def update_template(self, template_id: str, spec: TemplateSpec) -> TemplateState: ...

    @abc.abstractmethod
    def delete_template(self, template_id: str, name: str) -> None: ...

    @abc.abstractmethod
    def create_endpoint(self, spec: EndpointSpec) -> EndpointState: ...

    @abc.abstractmethod
    def get_endpoint(self, endpoint_id: str) -> Optional[EndpointState]: ...

    @abc.abstractmethod
    def update_endpoint(self, endpoint_id: str, spec: EndpointSpec, *, reapply_template: bool = False) -> EndpointState: ...

    @abc.abstractmethod
    def delete_endpoint(self, endpoint_id: str) -> None: ...

    # look-ups by name: a create whose response was lost may still have happened
    @abc.abstractmethod
    def find_volume(self, name: str) -> Optional[VolumeState]: ...

    @abc.abstractmethod
    def find_template(self, name: str) -> Optional[TemplateState]: ...

    @abc.abstractmethod
    def find_endpoint(self, name: str) -> Optional[EndpointState]: ...

    def gpu_pools(self) -> Optional[frozenset[str]]:
        """Serverless GPU pools in Runpod's catalogue; None where the API offers no catalogue."""
        return None


class Transport:
    """HTTP with bearer auth, retries with backoff on 429/5xx/transport errors, and redaction.

    Retry-After (seconds) wins over the computed backoff when the server sends it; both are capped
    so that a misbehaving server cannot park `pulumi up` for minutes per call.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 60.0,
        secrets: Iterable[str] = (),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise RunpodApiError(
                "no Runpod API key: run `pulumi config set --secret infinitetalk:runpodApiKey <key>`"
            )
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._secrets = [api_key, *secrets]
        self._client = httpx.Client(
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            follow_redirects=False,
        )

    def sleep(self, seconds: float) -> None:
        self._sleep(seconds)

    def delay(self, attempt: int) -> float:
        return self._delay(attempt, None)

    def add_secrets(self, values: Iterable[str]) -> None:
        self._secrets.extend(v for v in values if v)

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def close(self) -> None:
        self._client.close()

    def _delay(self, attempt: int, response: Optional[httpx.Response]) -> float:
        if response is not None:
            ra = response.headers.get("Retry-After")
            if ra is not None:
                try:
                    return min(max(float(ra), 0.0), self.max_backoff_s)
                except ValueError:
                    pass
        base = self.backoff_s * (2**attempt)
        return min(base + random.uniform(0, self.backoff_s), self.max_backoff_s)

    def request(
        self, method: str, path: str, operation: str, json_body: Any = None, *, retries: Optional[int] = None
    ) -> httpx.Response:
        """Send one call; 2xx and 4xx other than 429 return, 429/5xx retry then raise."""
        url = f"{self.base_url}{path}"
        last: Optional[httpx.Response] = None
        total = self.retries if retries is None else retries
        for attempt in range(total + 1):
            try:
                resp = self._client.request(method, url, json=json_body)
            except httpx.TransportError as exc:
                if attempt >= total:
                    raise RunpodServerError(
                        self.redact(f"Runpod {operation} failed: {type(exc).__name__}: {exc}"), operation=operation
                    ) from None
                self._sleep(self._delay(attempt, None))
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = resp
                if attempt >= total:
                    break
                self._sleep(self._delay(attempt, resp))
                continue
            return resp
        assert last is not None
        err = error_for_status(last.status_code, self.describe(last), operation)
        suffix = f" (gave up after {total + 1} attempts)"
        cls = RunpodRateLimitError if last.status_code == 429 else type(err)
        raise cls(self.redact(str(err) + suffix), status=last.status_code, operation=operation)

    def describe(self, resp: httpx.Response) -> str:
        """The server's explanation, from an RFC 7807 problem body when there is one."""
        try:
            body = resp.json()
        except ValueError:
            return self.redact(resp.text[:300] or resp.reason_phrase)
        if isinstance(body, dict):
            parts = [str(body.get("title") or ""), str(body.get("detail") or "")]
            errs = body.get("errors")
            if isinstance(errs, list) and errs:
                parts.append("; ".join(str(e.get("message", e) if isinstance(e, dict) else e) for e in errs[:5]))
            text = ": ".join(p for p in parts if p)
            return self.redact(text or str(body)[:300])
        return self.redact(str(body)[:300])

    def fail(self, resp: httpx.Response, operation: str) -> RunpodApiError:
        return error_for_status(resp.status_code, self.describe(resp), operation)



def create_once(
    transport: Transport, operation: str, send: Callable[[], Any], find: Callable[[], Optional[Any]]
) -> Any:
    """Create without duplicates: a failed POST may have succeeded (the response was lost), so
    before each retry the resource is looked up by name and, if it exists, that one is returned."""
    for attempt in range(transport.retries + 1):
        try:
            return send()
        except RunpodRateLimitError:  # refused before it was handled: nothing to look up
            if attempt >= transport.retries:
                raise
        except RunpodServerError:
            if attempt >= transport.retries:
                raise
            found = find()
            if found is not None:
                return found
        transport.sleep(transport.delay(attempt))
    raise RunpodServerError(f"Runpod {operation} failed", operation=operation)  # pragma: no cover


def wait_while(
    transport: Transport, attempt_fn: Callable[[], bool], *, wait_s: float, operation: str
) -> None:
    """Call `attempt_fn` until it returns True or `wait_s` has passed (then raise its last error).

    `attempt_fn` returns False while Runpod still refuses for a passing reason (a template stays
    bound to an endpoint for minutes after the endpoint is deleted)."""
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        if attempt_fn():
            return
        if time.monotonic() >= deadline:
            raise RunpodApiError(
                f"Runpod {operation}: still refused after {wait_s:.0f} s; run `pulumi destroy` again later",
                operation=operation,
            )
        transport.sleep(min(transport.delay(attempt), max(deadline - time.monotonic(), 0.0)))
        attempt += 1
