"""Where a finished job's MP4 ends up on the user's machine, whatever form the worker returned it in.

Shared by the CLI and the UI (kept apart from both so neither imports the other for it).
"""
from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import httpx


def save_result(output: Any, out_dir: Path, job_id: str, *, http: httpx.Client | None = None) -> Path | None:
    """Put the finished MP4 under out_dir whatever way the worker returned it; None if it cannot be reached."""
    if not isinstance(output, dict):
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / f"{job_id}.mp4"
    if output.get("video_base64"):
        dest.write_bytes(base64.b64decode(output["video_base64"]))
        return dest
    if output.get("video_url"):
        own = http is None
        http = http or httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0), follow_redirects=True)
        tmp = dest.with_suffix(".part")
        try:
            with http.stream("GET", output["video_url"]) as resp:
                resp.raise_for_status()
                with tmp.open("wb") as fh:
                    for block in resp.iter_bytes(1 << 20):
                        fh.write(block)
            tmp.replace(dest)
        finally:
            if own:
                http.close()
            tmp.unlink(missing_ok=True)
        return dest
    if output.get("video_path"):
        src = Path(output["video_path"])
        if src.is_file():  # a local worker on this machine
            shutil.copyfile(src, dest)
            return dest
    return None
