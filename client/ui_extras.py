"""The form's issue-19 fields → the job's parameters and media: framing, per-scene prompts, silence handling and
trim, dubbing strength, voice isolation, masks and LoRAs.

Kept free of gradio (like ui_setup), so the tests build the job from the same functions the page calls. Text
fields keep the command line's forms (client/flags.py): a scene per line as `SECONDS = TEXT`, a LoRA per line
as `REF[:SCALE]`, a polygon as JSON; an empty field leaves the worker's default.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from client.flags import lora_ref, scene_prompt, scenes_in_order

__all__ = ["ASPECT_DEFAULT", "scene_lines", "lora_lines", "polygon_text", "extra_params", "extra_media"]

ASPECT_DEFAULT = "default (from the picture)"
MUX_DEFAULT = "original"


def _num(v: Any) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {v!r}") from None


def scene_lines(text: str | None) -> list[dict[str, Any]] | None:
    """One scene per line, `SECONDS = TEXT`, in any order (sent in order of their starts)."""
    scenes = []
    for i, line in enumerate((text or "").splitlines(), 1):
        if line.strip():
            try:
                scenes.append(scene_prompt(line.strip()))
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"Scene prompts, line {i}: {exc}") from None
    return scenes_in_order(scenes)


def lora_lines(text: str | None) -> list[tuple[str, float | None]]:
    """One LoRA per line, `REF[:SCALE]`: a name in the worker's LoRA folder, a volume path or a URL."""
    return [lora_ref(line.strip()) for line in (text or "").splitlines() if line.strip()]


def polygon_text(text: str | None) -> list | None:
    """A polygon typed as JSON, [[x, y], …]; empty: none."""
    if not text or not text.strip():
        return None
    try:
        points = json.loads(text)
    except ValueError:
        raise ValueError("Mask polygon: type it as JSON points, e.g. [[0, 0], [200, 0], [200, 300]]") from None
    if not isinstance(points, list):
        raise ValueError("Mask polygon: a list of [x, y] points, e.g. [[0, 0], [200, 0], [200, 300]]")
    return points


def extra_params(
    *, aspect: str | None = None, width: Any = None, height: Any = None, scenes: str | None = None,
    silence_handling: bool | None = None, silence_threshold_db: Any = None, silence_min_s: Any = None,
    silence_audio_guide_scale: Any = None, trim_trailing_silence: bool = False, dub_strength: Any = None,
    audio_isolation: bool = False, audio_mux: str | None = None,
) -> dict[str, Any]:
    """The job parameters of these fields; unset ones are left out (the worker's default)."""
    w, h = _num(width), _num(height)
    params: dict[str, Any] = {
        "aspect": None if not aspect or aspect == ASPECT_DEFAULT else aspect,
        "width": None if w is None else int(w),
        "height": None if h is None else int(h),
        "prompts": scene_lines(scenes),
        "silence_handling": silence_handling,
        "silence_threshold_db": _num(silence_threshold_db),
        "silence_min_s": _num(silence_min_s),
        "silence_audio_guide_scale": _num(silence_audio_guide_scale),
        "trim_trailing_silence": True if trim_trailing_silence else None,
        "dub_strength": _num(dub_strength),
        "audio_isolation": True if audio_isolation else None,
        "audio_mux": audio_mux if audio_isolation and audio_mux and audio_mux != MUX_DEFAULT else None,
    }
    return {k: v for k, v in params.items() if v is not None}


def extra_media(
    *, mask_file: str | None = None, mask_polygon: str | None = None, mask1: str | None = None,
    mask2: str | None = None, loras: str | None = None, lora_files: list[str] | None = None, lora_scale: Any = None,
) -> dict[str, Any]:
    """MediaSpec's mask, masks and loras: uploaded files go the way the image goes (inlined or via S3)."""
    polygon = polygon_text(mask_polygon)
    if mask_file and polygon:
        raise ValueError("Motion mask: give a mask image or a polygon, not both.")
    scale = _num(lora_scale)
    return {
        "mask": mask_file or polygon,
        "masks": {p: m for p, m in (("person1", mask1), ("person2", mask2)) if m},
        "loras": [*((f, scale) for f in lora_files or ()), *lora_lines(loras)],
    }
