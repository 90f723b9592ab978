"""Per-segment webhook events (`webhook_events: ["segment", "done"]`), posted by the worker.

Runpod posts its own webhook (the request's top-level `webhook`) once, with the final status; it
knows nothing of segments. These events are ours, sent to the job's `webhook_url`, through the
same SSRF guard as media downloads (worker/inputs/netguard.py): the URL is vetted when the job
starts and every connection is pinned to a vetted address. Posting happens on its own thread so
a slow receiver never holds up the encoder; a refused or failing receiver is logged, never fatal.
"""
from __future__ import annotations

import queue
import threading
from typing import Any

import httpx

from contract.errors import ErrorCode, JobError
from worker.inputs.netguard import AddressRefused, GuardedTransport, NetPolicy, vet_url
from worker.logging_setup import get_logger

log = get_logger("worker.preview.events")
SCHEMES = frozenset({"https", "http"})


def check_webhook_url(url: str, policy: NetPolicy) -> None:
    """Refuse a webhook_url the guard would never connect to, before the job spends GPU time."""
    try:
        vet_url(url, policy, SCHEMES)
    except AddressRefused as exc:
        raise JobError(ErrorCode.E_INPUT_VALIDATION, f"webhook_url: {exc.reason}",
                       hint="webhook_url must be a public http(s) address", details={"field": "webhook_url"}) from None
    except (OSError, UnicodeError, ValueError):
        pass  # a name that does not resolve yet: every post vets it again


class EventPoster:
    """One thread posting `{"id", "event", ...}` bodies in order; `close()` waits a bounded time."""

    def __init__(self, job_id: str, url: str, events: frozenset[str], policy: NetPolicy, *,
                 timeout_s: float = 10.0, retries: int = 2) -> None:
        self.job_id, self.url, self.events = job_id, url, events
        self._client = httpx.Client(transport=GuardedTransport(policy), trust_env=False, timeout=timeout_s,
                                    follow_redirects=False)
        self._retries = retries
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.delivered = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="webhook-events", daemon=True)
        self._thread.start()

    def post(self, event: str, body: dict[str, Any]) -> None:
        if event in self.events:
            self._queue.put({"id": self.job_id, "event": event, **body})

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._client.close()

    def _run(self) -> None:
        while (body := self._queue.get()) is not None:
            for attempt in range(self._retries + 1):
                try:
                    status = self._client.post(self.url, json=body).status_code
                    if 200 <= status < 300:
                        self.delivered += 1
                        break
                    log.warning("webhook event rejected", kind=body["event"], status=status, attempt=attempt + 1)
                except AddressRefused as exc:
                    log.warning("webhook event refused", kind=body["event"], reason=exc.reason)
                    self.failed += 1
                    break
                except Exception as exc:  # noqa: BLE001 - a receiver's failure never ends the thread
                    log.warning("webhook event failed", kind=body["event"], error=type(exc).__name__,
                                attempt=attempt + 1)
            else:
                self.failed += 1
