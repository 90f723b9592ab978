"""Webhook delivery: POST of the job's final /status JSON, retried like Runpod (2 more tries, 10 s apart).

A webhook URL comes from the caller, so it passes the same SSRF guard as media URLs: checked when
the job is submitted (a clear 400) and again at every connection, pinned to the vetted address
(`GuardedTransport`), so a name that later resolves to a private address reaches nothing.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import structlog

from worker.inputs.netguard import AddressRefused, GuardedTransport, NetPolicy, vet_url

log = structlog.get_logger("local_endpoint.webhook")
SCHEMES = frozenset({"https", "http"})


def webhook_refusal(url: str, allow: tuple[str, ...]) -> str | None:
    """Why the webhook URL may not be used, or None (a name that does not resolve yet is let through:
    delivery vets it again)."""
    try:
        vet_url(url, NetPolicy(allow=allow), SCHEMES)
    except AddressRefused as exc:
        return exc.reason
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return None


def _post(url: str, body: dict[str, Any], allow: tuple[str, ...], timeout_s: float) -> int:
    with httpx.Client(transport=GuardedTransport(NetPolicy(allow=allow)), trust_env=False, timeout=timeout_s,
                      follow_redirects=False) as client:
        return client.post(url, json=body).status_code


async def deliver(
    url: str, body: dict[str, Any], *, retries: int, delay_s: float, timeout_s: float, allow: tuple[str, ...] = ()
) -> bool:
    """True once the receiver answers 2xx; False after the last failed attempt or a refused address."""
    for attempt in range(1, retries + 2):
        try:
            status = await asyncio.to_thread(_post, url, body, allow, timeout_s)
            if 200 <= status < 300:
                log.info("webhook_delivered", job_id=body.get("id"), attempt=attempt)
                return True
            log.warning("webhook_rejected", job_id=body.get("id"), attempt=attempt, status=status)
        except AddressRefused as err:
            log.warning("webhook_refused", job_id=body.get("id"), reason=err.reason)
            return False
        except (httpx.HTTPError, UnicodeError, ValueError) as err:
            log.warning("webhook_failed", job_id=body.get("id"), attempt=attempt, error=type(err).__name__)
        if attempt <= retries:
            await asyncio.sleep(delay_s)
    return False
