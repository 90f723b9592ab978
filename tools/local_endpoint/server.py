"""Runs the app under uvicorn (one process: the queue lives in memory)."""

from __future__ import annotations

import logging

import structlog
import uvicorn

from .app import create_app
from .settings import ServerSettings


class _HideInternalRoutes(logging.Filter):
    """Worker posts carry the server's internal token in their query; keep it out of access logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(isinstance(a, str) and a.startswith("/_local/") for a in (record.args or ()))


def _plain_logs() -> None:
    """structlog's default console renderer prints tracebacks with every frame's locals when `rich` is
    installed; here those locals are job payloads (megabytes, possibly secrets), so tracebacks are plain."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ]
    )


def serve(settings: ServerSettings, log_level: str = "info") -> None:
    _plain_logs()
    logging.basicConfig(level=log_level.upper(), format="%(message)s")
    logging.getLogger("uvicorn.access").addFilter(_HideInternalRoutes())
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level, workers=1)
