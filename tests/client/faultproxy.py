"""A fault-injecting HTTP reverse proxy for client tests: 429s and dropped connections on cue.

It sits between the client and the local endpoint on its own loopback port. Faults are queued
per route (a substring of the request path) and used up one request at a time:

    proxy.add("/run", Fault.throttle(retry_after="1"), times=2)   # two 429s on /run (not /runsync)
    proxy.add("/status/", Fault.drop(), times=3)                  # close three sockets unanswered
    proxy.add("/run", Fault.drop_after_forward())                 # the job is created, the answer lost

`proxy.log` records (method, path, what happened) for every request.
"""
from __future__ import annotations

import http.server
import socket
import threading
from collections import deque
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Fault:
    kind: str  # "throttle" | "error" | "drop" | "drop_after_forward"
    status: int = 429
    retry_after: str | None = None

    @classmethod
    def throttle(cls, retry_after: str | None = "1") -> "Fault":
        return cls("throttle", 429, retry_after)

    @classmethod
    def error(cls, status: int = 503) -> "Fault":
        return cls("error", status)

    @classmethod
    def drop(cls) -> "Fault":
        return cls("drop")

    @classmethod
    def drop_after_forward(cls) -> "Fault":
        return cls("drop_after_forward")


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._faults: list[tuple[str, deque[Fault]]] = []
        self._lock = threading.Lock()
        self.log: list[tuple[str, str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.path)
                kind = fault.kind if fault else "pass"
                proxy._record(self.command, self.path, kind)
                if fault and fault.kind == "drop":
                    self._drop()
                    return
                if fault and fault.kind in ("throttle", "error"):
                    payload = b'{"error":"injected fault"}'
                    self.send_response(fault.status)
                    if fault.retry_after is not None:
                        self.send_header("Retry-After", fault.retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                try:
                    resp = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers,
                                         timeout=330)
                except httpx.HTTPError:
                    self._drop()
                    return
                if fault and fault.kind == "drop_after_forward":
                    self._drop()
                    return
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    # RST instead of FIN, like a load balancer cutting the line
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_POST = do_DELETE = do_PUT = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, route: str, fault: Fault, times: int = 1) -> None:
        with self._lock:
            for r, q in self._faults:
                if r == route:
                    q.extend([fault] * times)
                    return
            self._faults.append((route, deque([fault] * times)))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.log.clear()

    @staticmethod
    def matches(route: str, path: str) -> bool:
        """A route ending in "/" matches as a prefix piece ("/status/"); others match the path's end ("/run")."""
        p = path.split("?")[0]
        return route in p if route.endswith("/") else p.endswith(route)

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            for route, q in self._faults:
                if self.matches(route, path) and q:
                    return q.popleft()
        return None

    def _record(self, method: str, path: str, kind: str) -> None:
        with self._lock:
            self.log.append((method, path.split("?")[0], kind))

    def count(self, route: str, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for _, p, k in self.log if self.matches(route, p) and (kind is None or k == kind))
