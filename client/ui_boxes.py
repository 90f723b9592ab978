"""Speaker boxes drawn on the image: two clicks give the corners, the box is drawn over a copy.

Gradio reports a click on an image in the image's own pixel coordinates, which is what the
worker's bbox expects (x0 y0 x1 y1), so no scaling happens here.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

__all__ = ["pick_corner", "draw_boxes"]

COLORS = ("#e11d48", "#2563eb")


def pick_corner(pending: Sequence[float] | None, point: Sequence[float] | None
                ) -> tuple[list[float] | None, list[float] | None]:
    """(corner still waiting, finished box): the first click is kept, the second closes the box."""
    if not point or len(point) < 2:
        return (list(pending) if pending else None), None
    x, y = float(point[0]), float(point[1])
    if not pending:
        return [x, y], None
    x0, y0 = float(pending[0]), float(pending[1])
    box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return [x, y], None  # a double click on one spot starts again from there
    return None, box


def draw_boxes(image: str | None, box1: Sequence[float] | None, box2: Sequence[float] | None, out_dir: Path,
               *, corner: Sequence[float] | None = None) -> str | None:
    """A PNG of `image` with the boxes (and a pending corner) drawn; None when the image cannot be opened."""
    if not image:
        return None
    from PIL import Image, ImageDraw, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            canvas = im.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 150))
    for box, color, name in ((box1, COLORS[0], "1"), (box2, COLORS[1], "2")):
        if box and len(box) == 4:
            draw.rectangle([float(v) for v in box], outline=color, width=width)
            draw.text((float(box[0]) + 4, float(box[1]) + 2), name, fill=color)
    if corner:
        x, y, r = float(corner[0]), float(corner[1]), width * 3
        draw.ellipse([x - r, y - r, x + r, y + r], outline=COLORS[0], width=width)
    key: Any = hashlib.sha1(repr((image, box1, box2, corner)).encode()).hexdigest()[:16]
    out = out_dir / "boxes"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{key}.png"
    canvas.save(path)
    return str(path)
