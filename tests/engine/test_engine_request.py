"""The resolved job settings become the engine's generation settings, field by field."""
from __future__ import annotations

from configuration import compose_config
from worker.resolve import apply_job_overrides
from worker.engine.engine_request import generation_settings
from contract.job import parse_job_input


def resolved(**fields):
    job = parse_job_input({"image": "/runpod-volume/a.png", "audio": "/runpod-volume/a.wav", **fields})
    return apply_job_overrides(compose_config(), job)


def test_turbo_preset_and_overrides_reach_the_sampler():
    s = generation_settings(resolved(sampler="turbo", seed=9, mode="streaming", max_duration_s=10))
    assert (s.sample_steps, s.text_guide_scale, s.audio_guide_scale, s.sample_shift) == (4, 1.0, 2.0, 2.0)
    assert s.seed == 9 and s.mode == "streaming" and s.max_frames == 250 and s.bucket == "infinitetalk-480"


def test_clip_mode_renders_exactly_one_chunk():
    s = generation_settings(resolved(mode="clip", frame_num=33))
    assert s.mode == "clip" and s.frame_num == 33 and s.max_frames == 33


def test_guidance_every_reaches_the_guider():
    assert generation_settings(resolved(sampler="turbo")).guidance.guidance_every == 1
    s = generation_settings(resolved(sampler="turbo", guidance_every=2))
    assert s.guidance_every == 2 and s.guidance.guidance_every == 2
