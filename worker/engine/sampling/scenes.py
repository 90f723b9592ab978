"""Per-scene prompts: which text context a chunk samples with.

A chunk takes the scene its first audio frame falls in (the last scene starting at or before it), so a
switch never changes the prompt inside a chunk; chunks that start before the first scene keep the job's
prompt. The contexts are encoded once per job by the runtime and only looked up here.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["chunk_context"]


def chunk_context(base: torch.Tensor, scenes: Sequence[tuple[int, torch.Tensor]], start_frame: int) -> torch.Tensor:
    """The context of the chunk starting at `start_frame` (25 fps): the latest scene begun by then, else `base`."""
    context = base
    for first, scene in scenes:  # sorted by start (the contract refuses anything else)
        if first > start_frame:
            break
        context = scene
    return context
