"""Per-job settings: the worker's composed config plus one validated job -> what the engine runs.

`apply_job_overrides(cfg, job)` -> `ResolvedJobConfig`: built only from validated `JobInput` fields
(user input never becomes an override string); this worker's limits (GPU tier's size cap, allow-listed
fields) are checked here. `generation_settings(resolved)` builds the engine's `GenerationSettings`
directly: every setting keeps its one name from `conf/` to the engine (copied by name), and only the
values the engine derives differently (frame budget, bucket tier) are computed here.
"""
from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from contract.choices import SIZE_RANK, VIDEO_FPS
from configuration.compose import results_overlap_inputs
from configuration.schema import AppConfig
from contract.errors import ErrorCode, JobError
from worker.engine import EngineRequest, GenerationSettings  # torch-free facade
from worker.framing import frame_size

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from contract.job import JobInput

__all__ = ["ResolvedJobConfig", "apply_job_overrides", "generation_settings", "build_request", "SHARED_SETTINGS"]


@dataclass(frozen=True)
class ResolvedJobConfig:
    """Everything the engine needs to know about how to run one job (not what: media, prompt)."""

    model: str
    gpu: str
    sampler: str
    size: str
    mode: str
    speakers: int
    audio_type: Optional[str]
    sample_steps: int
    sample_shift: float
    text_guide_scale: float
    audio_guide_scale: float
    use_apg: bool
    apg_momentum: float
    apg_norm_threshold: float
    use_teacache: bool
    teacache_thresh: float
    frame_num: int
    motion_frame: int
    max_duration_s: float
    color_correction_strength: float
    seed: int
    lora_file: Optional[str]
    lora_scale: float
    output_target: str
    key_prefix: str
    presign_expiry_s: int
    guidance_every: int = 1
    silence_handling: bool = False
    silence_threshold_db: float = -45.0
    silence_min_s: float = 0.3
    silence_audio_guide_scale: float = 1.0
    dub_strength: float = 1.0
    trim_trailing_silence: bool = False  # the job ends the video when the speech ends (worker/media/trim.py)
    audio_isolation: bool = False  # the speech separated from music/noise drives the video (worker/media/audio.py)
    audio_mux: str = "original"  # the MP4's soundtrack with isolation: original | voice
    frame_size: Optional[tuple[int, int]] = None  # (height, width) from aspect or width/height; None: buckets

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _invalid(message: str, field_name: str, hint: str | None = None) -> JobError:
    return JobError(
        ErrorCode.E_INPUT_VALIDATION,
        message,
        hint=hint,
        details={"errors": [{"field": field_name, "type": "worker_limit", "message": message}]},
    )


def _pick(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def apply_job_overrides(cfg: AppConfig, job: "JobInput") -> ResolvedJobConfig:
    """Combine the worker's config with a validated job; limits of this worker are checked here."""
    preset_name = job.sampler or cfg.sampler.name
    preset = cfg.sampler_presets.get(preset_name)
    if preset is None:
        raise _invalid(
            f"sampler preset {preset_name!r} is not available on this worker",
            "sampler",
            hint=f"use one of {sorted(cfg.sampler_presets)}",
        )
    size = job.size or cfg.job_defaults.size
    if SIZE_RANK[size] > SIZE_RANK[cfg.gpu.max_size]:
        raise _invalid(
            f"size {size} is larger than this worker's GPU tier ({cfg.gpu.name}) allows ({cfg.gpu.max_size})",
            "size",
            hint=f"use size={cfg.gpu.max_size} or an endpoint with a larger GPU",
        )
    speakers = job.speakers
    if speakers > cfg.model.max_speakers:
        raise _invalid(
            f"{speakers} speakers given but the loaded model ({cfg.model.name}) supports {cfg.model.max_speakers}",
            "audio",
            hint="send one speaker, or use an endpoint with a multi-speaker model",
        )
    # DEFAULT_SAMPLE_STEPS replaces the default preset's steps; a preset the job names keeps its own.
    default_steps = cfg.job_defaults.sample_steps if job.sampler is None else None
    steps = _pick(job.sample_steps, default_steps, preset.sample_steps)
    shift = _pick(job.sample_shift, preset.shift_720 if size == "infinitetalk-720" else preset.shift_480)
    frame_num = _pick(job.frame_num, preset.frame_num)
    motion_frame = _pick(job.motion_frame, preset.motion_frame)
    if motion_frame >= frame_num:
        given = "motion_frame" if job.motion_frame is not None else "frame_num"  # the one the job set
        raise _invalid(
            f"motion_frame ({motion_frame}) must be smaller than frame_num ({frame_num})", given,
            hint=f"Set {given} so that motion_frame < frame_num (both 4n+1), e.g. frame_num 81 with motion_frame 9, "
            "or frame_num 5 with motion_frame 1.",
        )
    max_duration = _pick(job.max_duration_s, cfg.server.max_duration_s)
    if max_duration > cfg.server.max_duration_s:
        raise _invalid(
            f"max_duration_s {max_duration} exceeds this worker's limit of {cfg.server.max_duration_s} s",
            "max_duration_s",
        )
    out = job.output
    target = _pick(out.target if out else None, cfg.storage.target)
    if target == "s3" and not cfg.storage.s3.bucket:
        raise _invalid(
            "output.target s3 is not configured on this worker (no S3 bucket)",
            "output.target",
            hint="use output.target volume or inline, or set S3_BUCKET on the endpoint",
        )
    if target == "s3" and out and out.key_prefix is not None and results_overlap_inputs(cfg.storage, out.key_prefix):
        raise _invalid(
            "output.key_prefix lies in (or contains) the S3 inputs prefix; results are never written there",
            "output.key_prefix",
        )
    expiry = _pick(out.presign_expiry_s if out else None, cfg.storage.s3.presign_expiry_s)
    if expiry > cfg.storage.s3.max_presign_expiry_s:
        raise _invalid(
            f"output.presign_expiry_s exceeds {cfg.storage.s3.max_presign_expiry_s}", "output.presign_expiry_s"
        )
    if job.audio_isolation and not cfg.model.isolation_path:
        raise _invalid(
            "audio_isolation is not available on this worker (model.isolation_path is unset)",
            "audio_isolation",
            hint="leave audio_isolation out, or set ISOLATION_WEIGHTS to htdemucs weights made by `weights isolation`",
        )
    seed = job.seed if job.seed is not None else secrets.randbelow(2**32)
    return ResolvedJobConfig(
        model=cfg.model.name,
        gpu=cfg.gpu.name,
        sampler=preset.name,
        size=size,
        mode=job.mode or cfg.job_defaults.mode,
        speakers=speakers,
        audio_type=job.effective_audio_type,
        sample_steps=int(steps),
        sample_shift=float(shift),
        text_guide_scale=float(_pick(job.text_guide_scale, preset.text_guide_scale)),
        audio_guide_scale=float(_pick(job.audio_guide_scale, preset.audio_guide_scale)),
        use_apg=bool(_pick(job.use_apg, cfg.job_defaults.use_apg)),
        apg_momentum=preset.apg_momentum,
        apg_norm_threshold=preset.apg_norm_threshold,
        use_teacache=bool(_pick(job.use_teacache, cfg.job_defaults.use_teacache)),
        teacache_thresh=float(_pick(job.teacache_thresh, preset.teacache_thresh)),
        guidance_every=int(_pick(job.guidance_every, preset.guidance_every)),
        silence_handling=bool(_pick(job.silence_handling, False)),
        silence_threshold_db=float(_pick(job.silence_threshold_db, -45.0)),
        silence_min_s=float(_pick(job.silence_min_s, 0.3)),
        silence_audio_guide_scale=float(_pick(job.silence_audio_guide_scale, 1.0)),
        dub_strength=float(_pick(job.dub_strength, 1.0)),
        trim_trailing_silence=bool(_pick(job.trim_trailing_silence, False)),
        audio_isolation=bool(_pick(job.audio_isolation, False)),
        audio_mux=str(_pick(job.audio_mux, "original")),
        frame_num=int(frame_num),
        motion_frame=int(motion_frame),
        max_duration_s=float(max_duration),
        color_correction_strength=float(_pick(job.color_correction_strength, preset.color_correction_strength)),
        seed=int(seed),
        lora_file=preset.lora_file,
        lora_scale=preset.lora_scale,
        output_target=target,
        key_prefix=_pick(out.key_prefix if out else None, cfg.storage.key_prefix),
        presign_expiry_s=int(expiry),
        frame_size=frame_size(size, job.aspect, job.width, job.height),
    )


# Settings that the job resolution and the engine both hold, under one name (tests/test_layering.py checks
# that every engine setting the conf/ tree carries is among them).
SHARED_SETTINGS = tuple(
    f.name for f in dataclasses.fields(GenerationSettings) if f.name in {g.name for g in dataclasses.fields(ResolvedJobConfig)}
)


def generation_settings(resolved: ResolvedJobConfig) -> GenerationSettings:
    """The engine's sampling settings for one job: shared settings by name, plus the derived ones."""
    values: dict[str, Any] = {name: getattr(resolved, name) for name in SHARED_SETTINGS}
    streaming_frames = max(1, int(resolved.max_duration_s * VIDEO_FPS))
    values["max_frames"] = resolved.frame_num if resolved.mode == "clip" else streaming_frames
    values["bucket"] = resolved.size
    values["teacache_model"] = resolved.size
    return GenerationSettings(**values)


def build_request(
    *,
    cond: "Image.Image | Iterable[Image.Image]",
    tracks: "tuple[np.ndarray, ...]",
    prompt: str,
    negative_prompt: str,
    resolved: ResolvedJobConfig,
    bboxes: tuple[tuple[float, float, float, float], ...] | None,
    scenes: "Iterable[tuple[float, str]]" = (),
) -> EngineRequest:
    """The engine's request: the job's media and prompt with its resolved settings and LoRA; `scenes`:
    (from_s, text) per-scene prompts, passed on at the frame each starts."""
    return EngineRequest(
        cond=cond,
        audio_tracks=tracks,
        prompt=prompt,
        negative_prompt=negative_prompt,
        settings=generation_settings(resolved),
        bboxes=bboxes,
        lora_file=resolved.lora_file or "",
        lora_scale=resolved.lora_scale,
        scenes=tuple((round(from_s * VIDEO_FPS), text) for from_s, text in scenes),
    )
