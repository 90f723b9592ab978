"""The job's masks (a polygon or a mask image) → a bool [H, W] raster at source resolution (issue 19).

The contract checks the polygon's form; only here, with the image in hand, can its points be checked
against the image's bounds. A mask image (fetched and checked like `image`) is stretched to the picture's
size and thresholded, so both forms reach the engine as the same raster, which resizes it to the latent
grid like the speaker boxes (one code path from here on).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from contract.errors import ErrorCode, JobError
from worker.media.media_frames import exif_upright


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


#: A mask image's pixel may move when its level (brightness, or alpha where the image has transparency) is at
#: least this, out of 255: 50%, so anti-aliased edges split evenly and JPEG noise on black or white is harmless.
MASK_LEVEL = 128
#: How far a mask image's width/height ratio may stray from the picture's before it is refused as the wrong file
#: (a rounding of its size on a 16- or 8-pixel grid stays well within).
ASPECT_TOLERANCE = 0.02

MaskSpec = Union[Sequence[Sequence[float]], Path]  # polygon points, or the fetched mask image's path


def mask_image_raster(path: Path, size: tuple[int, int], field: str = "mask") -> np.ndarray:
    """Bool [H, W] from a mask image, stretched to `size` (the picture's width, height): its alpha channel where
    it has real transparency, else its brightness, at least MASK_LEVEL. A ratio far from the picture's, or a mask
    with no pixel that may move, is the caller's mistake: E_INPUT_VALIDATION naming `field`."""
    w, h = size
    with Image.open(path) as stored:
        im = exif_upright(stored)
        mw, mh = im.size
        if abs((mw / mh) / (w / h) - 1) > ASPECT_TOLERANCE:
            raise JobError(ErrorCode.E_INPUT_VALIDATION,
                           f"{field}: the mask image is {mw}x{mh}, not the shape of the {w}x{h} picture",
                           hint=f"Give {field} as an image of the picture's aspect ({w}:{h}), e.g. {w}x{h}.",
                           details={"field": field})
        alpha = im.getchannel("A") if "A" in im.getbands() else (
            im.convert("RGBA").getchannel("A") if im.mode == "P" and "transparency" in im.info else None)
        level = alpha if alpha is not None and alpha.getextrema()[0] < 255 else im.convert("L")
        # bilinear, then the threshold: a resized edge falls where the 50% line was
        out = np.asarray(level.resize((w, h), Image.Resampling.BILINEAR)) >= MASK_LEVEL
    if not out.any():
        raise JobError(ErrorCode.E_INPUT_VALIDATION, f"{field}: the mask image has no pixel that may move",
                       hint=f"Paint white (or opaque) in {field} where the video may move.", details={"field": field})
    return out


def mask_raster(spec: MaskSpec, size: tuple[int, int], field: str = "mask") -> np.ndarray:
    """The one raster for either form of mask, at the picture's `size` (width, height)."""
    if isinstance(spec, Path):
        return mask_image_raster(spec, size, field)
    return rasterize_polygon(spec, size, field)


def mask_for_condition(spec: MaskSpec, cond):
    """(cond, raster): the mask at the condition's size — an image's, or a video's first frame
    (peeked, and put back in front of the frame iterator)."""
    if isinstance(cond, Image.Image):
        return cond, mask_raster(spec, cond.size)
    it = iter(cond)
    first = next(it, None)
    if first is None:
        return iter(()), None
    return itertools.chain([first], it), mask_raster(spec, first.size)


def speaker_regions_for_condition(polygons: dict[str, MaskSpec], cond):
    """(cond, (person1, person2) rasters): per-speaker masks (polygons or mask images), an alternative to bbox."""
    if isinstance(cond, Image.Image):
        size = cond.size
    else:
        it = iter(cond)
        first = next(it, None)
        if first is None:
            return iter(()), None
        cond, size = itertools.chain([first], it), first.size
    return cond, tuple(mask_raster(polygons[p], size, f"masks.{p}") for p in ("person1", "person2"))
