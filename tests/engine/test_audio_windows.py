"""Audio windows, tail padding and chunk planning."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors import safe_open

from tests.conftest import golden_cases, is_generation_case
from worker.engine.sampling.audio_windows import (
    audio_window,
    chunk_audio,
    pad_tail,
    plan_chunks,
    tail_pad_length,
)
from worker.engine.errors import AudioDecodeError


CASES = golden_cases(is_generation_case)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_windows_and_plan_match_golden(case):
    meta = json.loads((case / "meta.json").read_text())
    with safe_open(case / "tensors.safetensors", "pt") as f:
        emb = f.get_tensor("full_audio_embedding")
        plan = plan_chunks([emb.shape[0]], meta["frame_num"], meta["motion_frame"], meta["max_frames_num"], meta["mode"])
        assert len(plan.chunks) == meta["n_chunks"]
        assert plan.total_frames == f.get_tensor("final_video").shape[1]
        for spec in plan.chunks:
            got = chunk_audio([emb], spec, meta["frame_num"])
            want = f.get_tensor(f"chunk{spec.index}.audio_windows")
            assert torch.equal(got, want), spec


def test_window_clamps_both_ends():
    emb = torch.arange(6, dtype=torch.float32)[:, None]
    w = audio_window(emb, 0, 3)[..., 0]
    assert w.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]
    w = audio_window(emb, 4, 3)[..., 0]
    assert w.tolist() == [[2, 3, 4, 5, 5], [3, 4, 5, 5, 5], [4, 5, 5, 5, 5]]


def test_tail_pad_is_mirror_plus_three():
    emb = torch.arange(10, dtype=torch.float32)
    assert tail_pad_length(10, 9) == 0
    assert tail_pad_length(10, 10) == 3
    assert tail_pad_length(10, 13) == 6
    assert pad_tail(emb, 4).tolist() == list(range(10)) + [9, 8, 7, 6]
    assert pad_tail(emb, 0) is emb


def _reference_loop(lengths, frame_num, motion_frame, max_frames):
    """Plain re-statement of the reference control flow, for cross-checking the planner."""
    starts, kept, pads = [], [], []
    start, end, motion, first, last = 0, frame_num, 1, True, False
    miss = None
    total = 0
    while True:
        starts.append(start)
        total += frame_num if first else frame_num - motion
        if last:
            break
        first = False
        motion = motion_frame
        start += frame_num - motion
        end = start + frame_num
        if end >= min(max_frames, lengths[0]):
            last = True
            miss = [end - n + 3 if end >= n else 0 for n in lengths]
        if max_frames <= frame_num:
            break
    total = min(total, max_frames)
    if max_frames > frame_num and miss is not None and sum(miss) > 0:
        total = min(total, lengths[-1])
    return starts, total, miss


@pytest.mark.parametrize(
    "lengths,frame_num,motion_frame,max_frames",
    [
        (l, fn, mf, mx)
        for l, fn, mf, mx in itertools.product(
            [[12], [30], [81], [200], [200, 150], [90, 120]], [9, 17, 81], [1, 5, 9], [9, 40, 1000]
        )
        if mf < fn and all(n > fn for n in l)
    ],
)
def test_streaming_plan_matches_reference_control_flow(lengths, frame_num, motion_frame, max_frames):
    plan = plan_chunks(lengths, frame_num, motion_frame, max_frames, "streaming")
    starts, total, miss = _reference_loop(lengths, frame_num, motion_frame, max_frames)
    assert [c.audio_start for c in plan.chunks] == starts
    assert plan.total_frames == total
    assert plan.chunks[-1].is_last and not any(c.is_last for c in plan.chunks[:-1])
    assert plan.chunks[0].motion_frames == 1 and plan.chunks[0].skip == 0
    for c in plan.chunks[1:]:
        assert c.motion_frames == motion_frame == c.skip
        assert c.audio_end == c.audio_start + frame_num
    if miss is not None and len(plan.chunks) > 1:
        assert plan.chunks[-1].tail_pad == tuple(miss)
    assert sum(c.emit for c in plan.chunks) == plan.total_frames


def test_clip_mode_is_one_chunk():
    plan = plan_chunks([500], 81, 25, 1000, "clip")
    assert len(plan.chunks) == 1 and plan.total_frames == 81 and plan.chunks[0].is_last


def test_chunk_audio_stacks_speakers():
    a, b = torch.randn(20, 2, 3), torch.randn(25, 2, 3)
    plan = plan_chunks([20, 25], 9, 5, 1000)
    out = chunk_audio([a, b], plan.chunks[-1], 9)
    assert out.shape == (2, 9, 5, 2, 3)


def test_invalid_settings():
    with pytest.raises(AudioDecodeError):
        plan_chunks([9], 9, 5, 1000)
    with pytest.raises(ValueError):
        plan_chunks([100], 10, 5, 1000)
    with pytest.raises(ValueError):
        plan_chunks([100], 9, 9, 1000)
    with pytest.raises(ValueError):
        plan_chunks([100], 9, 5, 1000, "loop")
