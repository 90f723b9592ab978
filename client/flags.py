"""The command-line flags of the issue-19 job fields (framing, scenes, masks, LoRAs, silence, dubbing, voice
isolation), shared by `infinitetalk submit` and `infinitetalk run`, and their values: scenes (`S=TEXT`), LoRAs
(`REF[:SCALE]`) and masks (a file, a ref or a polygon in JSON). Each parser raises argparse.ArgumentTypeError, so a
bad value is a usage error naming the flag before anything is sent; the contract checks the rest (order, bounds)
with the worker's words.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from contract.choices import ASPECTS, AUDIO_MUX_CHOICES

__all__ = ["scene_prompt", "lora_ref", "mask_value", "scenes_in_order", "true_false", "add_feature_flags",
           "feature_fields", "FEATURE_PARAM_KEYS"]

# the flags whose value is the job field's value as it is
FEATURE_PARAM_KEYS = ("aspect", "width", "height", "dub_strength", "silence_handling", "silence_threshold_db",
                      "silence_min_s", "silence_audio_guide_scale", "trim_trailing_silence", "audio_isolation",
                      "audio_mux")

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


def true_false(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def add_feature_flags(group: Any) -> None:
    """The flags, on an argparse parser or argument group; unset flags leave the field out."""
    group.add_argument("--aspect", choices=ASPECTS, help="output framing preset")
    group.add_argument("--width", type=int, help="output width, a multiple of 16 (with --height)")
    group.add_argument("--height", type=int, help="output height, a multiple of 16 (with --width)")
    group.add_argument("--prompt-at", dest="prompts", action="append", type=scene_prompt, metavar="S=TEXT",
                       help="a scene's prompt from S seconds on (repeat for each scene; --prompt covers the start)")
    group.add_argument("--mask", type=mask_value, metavar="FILE|REF|JSON",
                       help="where the video may move: a mask image (file or ref) or a polygon [[x,y],…] in JSON")
    group.add_argument("--mask1", type=mask_value, metavar="FILE|REF|JSON", help="speaker 1's region (with --mask2)")
    group.add_argument("--mask2", type=mask_value, metavar="FILE|REF|JSON", help="speaker 2's region (instead of bbox)")
    group.add_argument("--lora", dest="loras", action="append", type=lora_ref, metavar="REF[:SCALE]",
                       help="a LoRA for this job: a local .safetensors file, a name in the worker's LoRA folder or a "
                       "URL; repeat for several")
    group.add_argument("--dub-strength", dest="dub_strength", type=float, help="with --video: 0 < s <= 1")
    group.add_argument("--silence-handling", dest="silence_handling", type=true_false, metavar="true|false",
                       help="let the face rest in pauses")
    group.add_argument("--silence-threshold-db", dest="silence_threshold_db", type=float, metavar="DB")
    group.add_argument("--silence-min-s", dest="silence_min_s", type=float, metavar="S")
    group.add_argument("--silence-audio-guide", dest="silence_audio_guide_scale", type=float, metavar="SCALE")
    group.add_argument("--trim-silence", dest="trim_trailing_silence", action="store_const", const=True,
                       help="end the video when the speech ends (trim_trailing_silence)")
    group.add_argument("--isolate-voice", dest="audio_isolation", action="store_const", const=True,
                       help="separate the speech from music/noise before lip sync (audio_isolation)")
    group.add_argument("--audio-mux", dest="audio_mux", choices=AUDIO_MUX_CHOICES,
                       help="the MP4's soundtrack with --isolate-voice: original or voice")


def feature_fields(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(job parameters, MediaSpec fields) from the flags that were given: masks and LoRAs are media, since their
    local files are sent the way --image's are."""
    params = {k: getattr(args, k) for k in FEATURE_PARAM_KEYS if getattr(args, k, None) is not None}
    if args.prompts:
        params["prompts"] = scenes_in_order(args.prompts)
    media: dict[str, Any] = {}
    if args.mask is not None:
        media["mask"] = args.mask
    if args.mask1 is not None or args.mask2 is not None:
        media["masks"] = {p: m for p, m in (("person1", args.mask1), ("person2", args.mask2)) if m is not None}
    if args.loras:
        media["loras"] = list(args.loras)
    return params, media
