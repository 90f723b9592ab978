"""Per-chunk audio conditioning and the chunk schedule of clip and streaming generation.

The whole chunk schedule depends only on integers (frame_num, motion_frame,
max_frames and the audio lengths), so it is planned up front: the generator can
then stream each chunk's frames knowing exactly how many of them survive the
reference's final truncation, without holding the video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from worker.engine.errors import AudioDecodeError

# Each video frame sees wav2vec2 frames at these offsets around its own index.
WINDOW_OFFSETS: tuple[int, ...] = (-2, -1, 0, 1, 2)
# The reference mirrors this many frames beyond what is strictly missing at the end.
TAIL_PAD_EXTRA = 3


def audio_window(embedding: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """[length, 5, ...] windows of `embedding` ([N, ...]) for frames start..start+length-1, indices clamped to [0, N-1]."""
    n = embedding.shape[0]
    centers = torch.arange(start, start + length).unsqueeze(1)
    idx = (centers + torch.tensor(WINDOW_OFFSETS).unsqueeze(0)).clamp(0, n - 1)
    return embedding[idx]


def tail_pad_length(n_frames: int, audio_end: int) -> int:
    """Frames to mirror onto an embedding of `n_frames` so a chunk ending at `audio_end` is covered (0: none)."""
    if audio_end >= n_frames:
        return audio_end - n_frames + TAIL_PAD_EXTRA
    return 0


def pad_tail(embedding: torch.Tensor, pad: int) -> torch.Tensor:
    """Append the last `pad` frames in reverse order (mirror), as the reference does at the end of the audio."""
    if pad <= 0:
        return embedding
    return torch.cat([embedding, torch.flip(embedding[-pad:], dims=[0])], dim=0)


@dataclass(frozen=True)
class ChunkSpec:
    """One generation chunk.

    `motion_frames` pixel frames of the previous output condition this chunk (1 = the
    condition image itself for the first chunk); `skip` leading frames of the decoded chunk
    repeat earlier output and are dropped; `emit` is how many frames after those survive
    the final truncation. `tail_pad` is the per-speaker mirrored padding that the audio has
    received by the time this chunk runs (non-zero only for the final chunk of a streaming run).
    """

    index: int
    audio_start: int
    audio_end: int
    motion_frames: int
    skip: int
    emit: int
    is_last: bool
    tail_pad: tuple[int, ...]

    @property
    def motion_latent_frames(self) -> int:
        return 1 + (self.motion_frames - 1) // 4


@dataclass(frozen=True)
class ChunkPlan:
    chunks: tuple[ChunkSpec, ...]
    total_frames: int


def latent_frames(frame_num: int) -> int:
    return (frame_num - 1) // 4 + 1


def plan_chunks(
    audio_lengths: Sequence[int],
    frame_num: int,
    motion_frame: int,
    max_frames: int,
    mode: str = "streaming",
) -> ChunkPlan:
    """Chunk schedule for `mode` "clip" (one chunk, max_frames = frame_num) or "streaming".

    `audio_lengths` are the per-speaker embedding lengths in video frames (25 fps).
    """
    if mode not in ("clip", "streaming"):
        raise ValueError(f"mode must be 'clip' or 'streaming', got {mode!r}")
    if frame_num < 5 or (frame_num - 1) % 4:
        raise ValueError(f"frame_num must be 4k+1 and >= 5, got {frame_num}")
    if motion_frame < 1 or (motion_frame - 1) % 4 or motion_frame >= frame_num:
        raise ValueError(f"motion_frame must be 4k+1 and < frame_num, got {motion_frame}")
    if not audio_lengths:
        raise ValueError("at least one speaker's audio is needed")
    for i, n in enumerate(audio_lengths):
        if n <= frame_num:
            raise AudioDecodeError(
                f"audio of speaker {i + 1} gives {n} frames; more than frame_num={frame_num} are needed"
            )
    if mode == "clip":
        max_frames = frame_num
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")

    n_humans = len(audio_lengths)
    raw: list[tuple[int, int, int, bool, tuple[int, ...]]] = []
    start, end, motion = 0, frame_num, 1
    pads: tuple[int, ...] = (0,) * n_humans
    last = False
    while True:
        raw.append((start, end, motion, last, pads))
        if last or max_frames <= frame_num:
            break
        motion = motion_frame
        start += frame_num - motion
        end = start + frame_num
        if end >= min(max_frames, audio_lengths[0]):
            last = True
            pads = tuple(tail_pad_length(n, end) for n in audio_lengths)

    cap = max_frames
    if max_frames > frame_num and sum(raw[-1][4]) > 0:
        # The reference trims padded streaming output to the last speaker's original length.
        cap = min(cap, audio_lengths[-1])

    chunks = []
    emitted = 0
    for i, (s, e, m, lst, p) in enumerate(raw):
        skip = 0 if i == 0 else m
        new = frame_num - skip
        emit = max(0, min(new, cap - emitted))
        emitted += emit
        chunks.append(ChunkSpec(i, s, e, m, skip, emit, i == len(raw) - 1, p))
    return ChunkPlan(tuple(chunks), emitted)


def chunk_audio(embeddings: Sequence[torch.Tensor], spec: ChunkSpec, frame_num: int) -> torch.Tensor:
    """Audio condition of one chunk: [n_speakers, frame_num, 5, layers, width] from per-speaker [N, layers, width]."""
    if len(spec.tail_pad) != len(embeddings):
        raise ValueError("one tail padding per speaker expected")
    wins = [audio_window(pad_tail(e, p), spec.audio_start, frame_num) for e, p in zip(embeddings, spec.tail_pad)]
    return torch.stack(wins, dim=0)
