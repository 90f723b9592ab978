"""A local server that speaks Runpod's public serverless endpoint API and runs a handler in worker processes.

Point the runpod SDK at it with `runpod.endpoint_url_base = "http://127.0.0.1:PORT/v2"`.

Exports resolve lazily: spawned worker processes import this package to reach
`worker_process`, and should not pay for FastAPI/uvicorn they never use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .server import serve
    from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .server import serve

        return serve
    if name == "ServerSettings":
        from .settings import ServerSettings

        return ServerSettings
    raise AttributeError(name)
