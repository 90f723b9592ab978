"""Handlers for the local endpoint server's tests (fixtures only; the real handler lives in worker/).

`handler` picks its behaviour from input["mode"], so one server covers most cases; generators
need their own server because the SDK decides "stream or not" from the function itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import runpod


def handler(job: dict[str, Any]) -> Any:
    inp = job["input"]
    mode = inp.get("mode", "echo")
    if mode == "echo":
        return {"echo": inp.get("value"), "job_id": job["id"]}
    if mode == "sleep":
        time.sleep(float(inp.get("seconds", 1)))
        return {"slept": inp.get("seconds", 1)}
    if mode == "progress":
        steps = int(inp.get("steps", 3))
        for i in range(steps):
            runpod.serverless.progress_update(job, {"stage": "sampling", "percent": int(100 * (i + 1) / steps), "step": i + 1})
            time.sleep(float(inp.get("step_s", 0.4)))
        return {"done": steps}
    if mode == "fail_return":
        return {"error": inp.get("message", "boom")}
    if mode == "raise":
        raise RuntimeError(inp.get("message", "handler exploded"))
    if mode == "fail_once":
        marker = Path(inp["marker"])
        if not marker.exists():
            marker.write_text("failed once")
            return {"error": "first attempt fails"}
        return {"attempt": "second"}
    if mode == "pid":
        out: dict[str, Any] = {"pid": os.getpid()}
        if inp.get("refresh"):
            out["refresh_worker"] = True
        return out
    return {"error": f"unknown mode {mode!r}"}


def stream_handler(job: dict[str, Any]) -> Iterator[Any]:
    for i in range(int(job["input"].get("pieces", 3))):
        time.sleep(float(job["input"].get("piece_s", 0.1)))
        yield {"piece": i}
