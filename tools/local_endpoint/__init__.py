"""A local server that speaks Runpod's public serverless endpoint API and runs a handler in worker processes.

Run it with `python -m tools.local_endpoint --handler module:func --port 8000 --workers 1`
(or `serve(ServerSettings(...))`), then point the unchanged runpod SDK at it:
`runpod.endpoint_url_base = "http://127.0.0.1:8000/v2"`; `runpod.Endpoint(any_id).run(...)`.

Choices where Runpod's documentation leaves room: a job whose ttl passes while queued becomes
TIMED_OUT (Runpod's job-state docs: "expired before it was picked up"); purged jobs become
CANCELLED; webhooks fire for every final state; /health counts TIMED_OUT under `failed`; the
policy minimums Runpod enforces (executionTimeout > 5 s, ttl >= 10 s) are not enforced so tests
can use short ones; `lowPriority` and `s3Config` are accepted and ignored; `/retry` takes FAILED and
TIMED_OUT jobs only, as Runpod documents. Hostile requests: bodies are capped (10 MB `/run`, 20 MB
`/runsync`, Runpod's figures) and so is JSON nesting (32 levels); webhook URLs pass the media SSRF guard;
a non-loopback bind needs `--api-key` (or `--allow-unauthenticated`).

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
