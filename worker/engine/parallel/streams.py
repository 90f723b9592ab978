"""Condition frames of a dubbing job reach the followers as the leader reads them.

A source video arrives as a one-pass iterator that only the leader holds (decoding it in every rank would
repeat the download and decode). Every rank pulls frames at the same points of the loop, so the leader
broadcasts each frame as it pulls it and the followers' iterator receives exactly those; an image or a
list of frames is simply sent with the job.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch.distributed as dist
from PIL import Image


class _Streamed:
    """Marks a follower's condition that arrives frame by frame from the leader."""

    def __repr__(self) -> str:
        return "STREAMED_FROM_LEADER"


STREAMED = _Streamed()
_END = "end-of-frames"


def _sent_whole(cond: Any) -> bool:
    return isinstance(cond, (Image.Image, np.ndarray)) or isinstance(cond, Sequence)


def _leader_frames(cond: Iterable[Any]) -> Iterator[Any]:
    for frame in cond:
        dist.broadcast_object_list([frame], src=0)
        yield frame
    dist.broadcast_object_list([_END], src=0)


def _follower_frames() -> Iterator[Any]:
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        if isinstance(box[0], str) and box[0] == _END:
            return
        yield box[0]


def split_request(request: Any) -> tuple[Any, Any]:
    """(the leader's request, the request sent to the followers)."""
    if _sent_whole(request.cond):
        return request, request
    return replace(request, cond=_leader_frames(request.cond)), replace(request, cond=STREAMED)


def follower_request(request: Any) -> Any:
    return replace(request, cond=_follower_frames()) if isinstance(request.cond, _Streamed) else request
