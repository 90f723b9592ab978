"""What both Runpod stand-ins share: a loopback WSGI server in a thread, bearer auth, fault injection."""
from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import logging

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass
class Fault:
    status: int
    retry_after: Optional[int] = None
    path_prefix: str = ""


class FaultQueue:
    """Responses to force before the real handler runs: `add(500, times=2)` fails the next two calls."""

    def __init__(self) -> None:
        self._q: deque[Fault] = deque()
        self._lock = threading.Lock()

    def add(self, status: int, *, times: int = 1, retry_after: Optional[int] = None, path_prefix: str = "") -> None:
        with self._lock:
            for _ in range(times):
                self._q.append(Fault(status, retry_after, path_prefix))

    def take(self, path: str) -> Optional[Fault]:
        with self._lock:
            if self._q and path.startswith(self._q[0].path_prefix):
                return self._q.popleft()
        return None

    def pending(self) -> int:
        with self._lock:
            return len(self._q)


_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):06d}"


class StandIn:
    """Base: holds the API key it accepts, a fault queue, a request log and violations seen."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.faults = FaultQueue()
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self.violations: list[str] = []
        self.lock = threading.RLock()
        self.base_url = ""

    def authorized(self, request: Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def wsgi(self, environ, start_response):  # pragma: no cover - overridden
        raise NotImplementedError


@contextlib.contextmanager
def serve(app: Callable) -> Iterator[str]:
    """Run a WSGI app on 127.0.0.1 (a free port) in a daemon thread; yields its base URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="standin", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def json_response(status: int, body: object, content_type: str = "application/json", headers: dict | None = None) -> Response:
    return Response(json.dumps(body), status=status, content_type=content_type, headers=headers or {})
