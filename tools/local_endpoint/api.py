"""Public routes, the same paths and JSON as https://api.runpod.ai/v2/{endpoint_id}/..."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from .auth import authorized
from .dispatcher import Dispatcher, RetryRefused
from contract.errors import clean_text

from .jobs import Job
from .limits import BodyRefused, parse_body
from .models import RunRequest
from .webhook import webhook_refusal

RUNSYNC_WAIT_MIN_MS, RUNSYNC_WAIT_MAX_MS = 1000, 300_000


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_router(dispatcher: Dispatcher) -> APIRouter:
    settings = dispatcher.settings
    router = APIRouter(prefix="/v2/{endpoint_id}")

    def gate(request: Request, endpoint_id: str) -> JSONResponse | None:
        if not authorized(request, settings.api_key):
            return _error(401, "Unauthorized")
        if settings.endpoint_id is not None and endpoint_id != settings.endpoint_id:
            return _error(404, f"endpoint {endpoint_id} not found")
        return None

    def find(job_id: str) -> Job | JSONResponse:
        job = dispatcher.store.get(job_id)
        return job if job is not None else _error(404, "request does not exist")

    async def read_body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyRefused(413, f"request body is larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BodyRefused(413, f"request body is larger than {limit} bytes")
        return bytes(body)

    async def parse_run(request: Request, limit: int) -> RunRequest | JSONResponse:
        try:
            raw: Any = parse_body(await read_body(request, limit), max_depth=settings.max_json_depth)
        except BodyRefused as err:
            return _error(err.status, err.message)
        if not isinstance(raw, dict) or raw.get("input") is None:
            return _error(400, "request body must be an object with an 'input' key")
        try:
            body = RunRequest.model_validate(raw)
        except ValidationError as err:
            problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_url=False, include_input=False)]
            return _error(400, clean_text(f"invalid request: {'; '.join(problems)[:500]}"))
        if body.webhook is not None:
            refusal = await asyncio.to_thread(webhook_refusal, body.webhook, settings.webhook_allow)
            if refusal:
                return _error(400, clean_text(f"webhook refused: {refusal}"))
        return body

    @router.post("/run")
    async def run(endpoint_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request, endpoint_id)) is not None:
            return denied
        body = await parse_run(request, settings.max_run_bytes)
        if isinstance(body, JSONResponse):
            return body
        job = dispatcher.submit(body, sync=False)
        return JSONResponse({"id": job.id, "status": job.status.value})

    @router.post("/runsync")
    async def runsync(endpoint_id: str, request: Request, wait: int | None = None) -> JSONResponse:
        if (denied := gate(request, endpoint_id)) is not None:
            return denied
        body = await parse_run(request, settings.max_runsync_bytes)
        if isinstance(body, JSONResponse):
            return body
        wait_ms = settings.runsync_wait_ms if wait is None else min(max(wait, RUNSYNC_WAIT_MIN_MS), RUNSYNC_WAIT_MAX_MS)
        job = dispatcher.submit(body, sync=True)
        try:
            await asyncio.wait_for(asyncio.shield(job.done.wait()), timeout=wait_ms / 1000)
        except TimeoutError:
            pass  # still running: the caller polls /status with the id, as the SDK does
        return JSONResponse(job.to_status())

    @router.api_route("/status/{job_id}", methods=["GET", "POST"])
    async def status(endpoint_id: str, job_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request, endpoint_id)) is not None:
            return denied
        job = find(job_id)
        return job if isinstance(job, JSONResponse) else JSONResponse(job.to_status())

    @router.api_route("/stream/{job_id}", methods=["GET", "POST"])
    async def stream(endpoint_id: str, job_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request, endpoint_id)) is not None:
            return denied
        job = find(job_id)
        return job if isinstance(job, JSONResponse) else JSONResponse(job.take_stream())

    @router.post("/cancel/{job_id}")
    async def cancel(endpoint_id: str, job_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request, endpoint_id)) is not None:
            return denied
        job = find(job_id)
        if isinstance(job, JSONResponse):
            return job
        dispatcher.cancel(job)
        return JSONResponse({"id": job.id, "status": job.status.value})

    @router.post("/retry/{job_id}")
    async def retry(endpoint_id: str, job_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request, endpoint_id)) is not None:
            return denied
        job = find(job_id)
        if isinstance(job, JSONResponse):
            return job
        try:
            dispatcher.retry(job)
        except RetryRefused as err:
            return _error(400, str(err))
        return JSONResponse({"id": job.id, "status": job.status.value})

    @router.get("/health")
    async def health(endpoint_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request, endpoint_id)) is not None:
            return denied
        return JSONResponse(dispatcher.health())

    @router.post("/purge-queue")
    async def purge_queue(endpoint_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request, endpoint_id)) is not None:
            return denied
        return JSONResponse({"removed": dispatcher.purge_queue(), "status": "completed"})

    return router
