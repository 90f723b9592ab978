"""The job's output framing: `aspect` or `width`/`height` -> one (height, width) within the size tier's budget.

Torch-free and per-job, so it lives beside resolve.py; the engine then maps every input frame onto this one
size with the same resize/centre-crop it uses for its buckets. None keeps the bucket table (the bucket nearest
the input's own aspect), the reference behaviour.
"""
from __future__ import annotations

import math

from contract.choices import SIZE_PIXELS
from contract.errors import ErrorCode, JobError

__all__ = ["frame_size"]

_STEP = 16  # the VAE's 8x downsampling times the DiT's 2x2 patches


def _refuse(message: str, field: str, hint: str) -> JobError:
    return JobError(ErrorCode.E_INPUT_VALIDATION, message, hint=hint,
                    details={"errors": [{"field": field, "type": "worker_limit", "message": message}]})


def aspect_size(aspect: str, budget: int) -> tuple[int, int]:
    """(height, width): the largest multiple-of-16 frame of ratio `aspect` (w:h) whose pixels fit `budget`."""
    aw, ah = (int(p) for p in aspect.split(":"))
    s = math.sqrt(budget / (aw * ah))
    return int(ah * s) // _STEP * _STEP, int(aw * s) // _STEP * _STEP


def frame_size(size: str, aspect: str | None, width: int | None, height: int | None) -> tuple[int, int] | None:
    """The job's (height, width) for tier `size`, or None for the bucket table; too large -> E_INPUT_VALIDATION."""
    budget = SIZE_PIXELS[size]
    if width is not None and height is not None:
        if width * height > budget:
            raise _refuse(
                f"width {width} x height {height} = {width * height} pixels is more than size {size} allows "
                f"({budget} pixels)", "width",
                hint="use a smaller width/height, or a larger size if this worker's GPU tier allows it",
            )
        return height, width
    if aspect is not None:
        return aspect_size(aspect, budget)
    return None
