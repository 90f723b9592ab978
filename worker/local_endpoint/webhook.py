"""Webhook delivery: POST of the job's final /status JSON, retried like Runpod (2 more tries, 10 s apart)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import structlog

log = structlog.get_logger("local_endpoint.webhook")


async def deliver(url: str, body: dict[str, Any], *, retries: int, delay_s: float, timeout_s: float) -> bool:
    """True once the receiver answers 2xx; False after the last failed attempt."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for attempt in range(1, retries + 2):
            try:
                response = await client.post(url, json=body)
                if 200 <= response.status_code < 300:
                    log.info("webhook_delivered", job_id=body.get("id"), attempt=attempt)
                    return True
                log.warning("webhook_rejected", job_id=body.get("id"), attempt=attempt, status=response.status_code)
            except httpx.HTTPError as err:
                log.warning("webhook_failed", job_id=body.get("id"), attempt=attempt, error=type(err).__name__)
            if attempt <= retries:
                await asyncio.sleep(delay_s)
    return False
