"""The job's motion mask polygon → a bool [H, W] raster at source resolution (issue 19).

The contract checks the polygon's form; only here, with the image in hand, can its points be checked
against the image's bounds. The engine resizes the raster to the latent grid like the speaker boxes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from contract.errors import ErrorCode, JobError


def rasterize_polygon(points: Sequence[Sequence[float]], size: tuple[int, int], field: str = "mask") -> np.ndarray:
    """Bool [H, W], True inside the polygon; `size` is the source (width, height). A point outside the
    image is the caller's mistake: E_INPUT_VALIDATION naming `mask` and the point."""
    w, h = size
    for i, (x, y) in enumerate(points):
        if not (0 <= x <= w and 0 <= y <= h):
            raise JobError(ErrorCode.E_INPUT_VALIDATION,
                           f"{field}[{i}] = [{x:g}, {y:g}] lies outside the {w}x{h} image",
                           hint=f"Give mask points with 0 <= x <= {w} and 0 <= y <= {h} (source pixels).",
                           details={"field": f"{field}[{i}]"})
    canvas = Image.new("1", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=1, outline=1)
    out = np.array(canvas, dtype=bool)
    if not out.any():
        raise JobError(ErrorCode.E_INPUT_VALIDATION, f"{field} covers no pixel of the image",
                       hint="Draw the mask polygon around the region that may move.", details={"field": field})
    return out


def mask_for_condition(points: Sequence[Sequence[float]], cond):
    """(cond, raster): the mask rasterized at the condition's size — an image's, or a video's first frame
    (peeked, and put back in front of the frame iterator)."""
    if isinstance(cond, Image.Image):
        return cond, rasterize_polygon(points, cond.size)
    it = iter(cond)
    first = next(it, None)
    if first is None:
        return iter(()), None
    return itertools.chain([first], it), rasterize_polygon(points, first.size)


def speaker_regions_for_condition(polygons: dict[str, Sequence[Sequence[float]]], cond):
    """(cond, (person1, person2) rasters): per-speaker masks, an alternative to bbox."""
    if isinstance(cond, Image.Image):
        size = cond.size
    else:
        it = iter(cond)
        first = next(it, None)
        if first is None:
            return iter(()), None
        cond, size = itertools.chain([first], it), first.size
    return cond, tuple(rasterize_polygon(polygons[p], size, f"masks.{p}") for p in ("person1", "person2"))
