"""Command-line values of the issue-19 job fields: scenes (`S=TEXT`), LoRAs (`REF[:SCALE]`) and masks (a file,
a ref or a polygon in JSON). Each parser raises argparse.ArgumentTypeError, so a bad value is a usage error
naming the flag before anything is sent; the contract checks the rest (order, bounds) with the worker's words.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

__all__ = ["scene_prompt", "lora_ref", "mask_value", "scenes_in_order"]

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def scene_prompt(text: str) -> dict[str, Any]:
    """`12.5=a beach at dusk` → {"from_s": 12.5, "text": "a beach at dusk"} (the first `=` splits)."""
    start, eq, words = text.partition("=")
    if not eq or not _NUMBER.match(start.strip()):
        raise argparse.ArgumentTypeError(f"expected SECONDS=TEXT, e.g. 0=a studio or 12.5=a beach, got {text!r}")
    return {"from_s": float(start), "text": words.strip()}


def scenes_in_order(scenes: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The --prompt-at values by start (the contract wants them in order; the command line need not be)."""
    return sorted(scenes, key=lambda p: p["from_s"]) if scenes else None


def lora_ref(text: str) -> tuple[str, float | None]:
    """`REF[:SCALE]` → (ref, scale or None): the last `:` splits only when a finite number follows it, so
    https://host/x.safetensors and s3://b/k stay whole."""
    ref, colon, tail = text.rpartition(":")
    if colon and ref and _NUMBER.match(tail.strip()) and math.isfinite(float(tail)):
        return ref, float(tail)
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a LoRA file, name or URL, optionally :SCALE")
    return text, None


def mask_value(text: str) -> str | list:
    """A polygon in JSON (`[[x, y], …]`) as a list; anything else is a file or a ref (sent like --image)."""
    if text.lstrip().startswith("["):
        try:
            polygon = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"a polygon must be JSON like [[0,0],[100,0],[100,80]]: {exc}") from None
        if not isinstance(polygon, list):
            raise argparse.ArgumentTypeError("a polygon must be a JSON list of [x, y] points")
        return polygon
    return text
