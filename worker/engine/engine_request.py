"""Builds the engine's typed request from the worker's resolved job settings."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from worker.resolve import ResolvedJobConfig

from worker.engine.settings import EngineRequest, GenerationSettings

FPS = 25


def generation_settings(resolved: ResolvedJobConfig) -> GenerationSettings:
    max_frames = max(1, int(resolved.max_duration_s * FPS))
    return GenerationSettings(
        sample_steps=resolved.sample_steps,
        sample_shift=resolved.sample_shift,
        text_guide_scale=resolved.text_guide_scale,
        audio_guide_scale=resolved.audio_guide_scale,
        seed=resolved.seed,
        frame_num=resolved.frame_num,
        motion_frame=resolved.motion_frame,
        max_frames=resolved.frame_num if resolved.mode == "clip" else max_frames,
        mode=resolved.mode,
        color_correction_strength=resolved.color_correction_strength,
        bucket=resolved.size,
        use_apg=resolved.use_apg,
        apg_momentum=resolved.apg_momentum,
        apg_norm_threshold=resolved.apg_norm_threshold,
        use_teacache=resolved.use_teacache,
        teacache_thresh=resolved.teacache_thresh,
        teacache_model=resolved.size,
        guidance_every=resolved.guidance_every,
    )


def build_request(
    *,
    cond: Image.Image | Iterable[Image.Image],
    tracks: tuple[np.ndarray, ...],
    prompt: str,
    negative_prompt: str,
    resolved: ResolvedJobConfig,
    bboxes: tuple[tuple[float, float, float, float], ...] | None,
) -> EngineRequest:
    return EngineRequest(
        cond=cond,
        audio_tracks=tracks,
        prompt=prompt,
        negative_prompt=negative_prompt,
        settings=generation_settings(resolved),
        bboxes=bboxes,
        lora_file=resolved.lora_file or "",
        lora_scale=resolved.lora_scale,
    )
