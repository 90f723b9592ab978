"""Limits on what one request may hold, checked before anything else touches it.

Runpod documents 10 MB for a /run body and 20 MB for /runsync. JSON nesting is bounded too: a
900-level field parses, but pickling it for a worker process, validating it and printing its
error each recurse once per level (and logging that traceback with locals once took 25 MB and
30 s of the event loop). No job contract needs more than a handful of levels.
"""

from __future__ import annotations

import json
from typing import Any

MB = 1000 * 1000
RUN_MAX_BYTES = 10 * MB
RUNSYNC_MAX_BYTES = 20 * MB
MAX_JSON_DEPTH = 32


class BodyRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when containers nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def parse_body(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The request's JSON, or BodyRefused (400) when it is not JSON or nests too deeply.

    Strict RFC 8259: Python's parser takes the tokens NaN/Infinity/-Infinity, which no other JSON parser (nor the
    worker's) does, so a job the local endpoint queued would fail elsewhere.
    """
    try:
        value = json.loads(raw or b"null", parse_constant=_not_json)
    except RecursionError:
        raise BodyRefused(400, f"request body nests deeper than {max_depth} levels") from None
    except ValueError:
        raise BodyRefused(400, "request body is not valid JSON") from None
    if json_depth_exceeds(value, max_depth):
        raise BodyRefused(400, f"request body nests deeper than {max_depth} levels")
    return value
