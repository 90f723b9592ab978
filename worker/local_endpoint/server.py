"""Runs the app under uvicorn (one process: the queue lives in memory)."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .settings import ServerSettings


class _HideInternalRoutes(logging.Filter):
    """Worker posts carry the server's internal token in their query; keep it out of access logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(isinstance(a, str) and a.startswith("/_local/") for a in (record.args or ()))


def serve(settings: ServerSettings, log_level: str = "info") -> None:
    logging.basicConfig(level=log_level.upper(), format="%(message)s")
    logging.getLogger("uvicorn.access").addFilter(_HideInternalRoutes())
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level, workers=1)
