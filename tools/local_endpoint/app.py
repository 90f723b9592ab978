"""Builds the FastAPI app: public Runpod routes, internal worker routes, dispatcher lifespan."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .api import build_router
from .dispatcher import Dispatcher
from .internal import build_internal_router
from .pool import WorkerPool
from .settings import ServerSettings


def create_app(settings: ServerSettings) -> FastAPI:
    token = secrets.token_urlsafe(24)
    pool = WorkerPool(settings, token)
    holder: dict[str, Dispatcher] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = holder["dispatcher"]
        dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()

    app = FastAPI(title="Local Runpod serverless endpoint", lifespan=lifespan)
    # The dispatcher's asyncio objects are created lazily on the running loop; building it here
    # only wires references.
    dispatcher = Dispatcher(settings, pool)
    holder["dispatcher"] = dispatcher
    app.state.dispatcher = dispatcher
    app.include_router(build_router(dispatcher))
    app.include_router(build_internal_router(dispatcher, token))
    return app
