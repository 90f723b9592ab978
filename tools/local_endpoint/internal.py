"""Routes the runpod SDK inside our worker processes posts to, in place of Runpod's job-done/job-stream.

The SDK sends a JSON text with a form content type (rp_http._transmit) and appends
`&isStream=...`; the per-server token in the query keeps other local clients from forging results.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .dispatcher import Dispatcher


def build_internal_router(dispatcher: Dispatcher, token: str) -> APIRouter:
    router = APIRouter(prefix="/_local", include_in_schema=False)

    async def read(request: Request) -> tuple[bool, Any]:
        if not hmac.compare_digest(request.query_params.get("token", "").encode(), token.encode()):
            return False, None
        try:
            return True, json.loads(await request.body())
        except ValueError:
            return True, None

    @router.post("/job-done/{worker_id}/{job_id}")
    async def job_done(worker_id: str, job_id: str, request: Request) -> JSONResponse:
        ok, body = await read(request)
        if not ok:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return JSONResponse({"accepted": dispatcher.on_job_done(worker_id, job_id, body)})

    @router.post("/job-stream/{worker_id}/{job_id}")
    async def job_stream(worker_id: str, job_id: str, request: Request) -> JSONResponse:
        ok, body = await read(request)
        if not ok:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return JSONResponse({"accepted": dispatcher.on_job_stream(worker_id, job_id, body)})

    return router
