import json

import pytest

from configuration import AppConfig, compose_config
from contract.errors import ErrorCode, JobError
from contract.job import parse_job_input
from worker.resolve import apply_job_overrides, generation_settings

IMG = "https://example.com/face.png"
AUD = "https://example.com/a.wav"


@pytest.fixture(scope="module")
def cfg() -> AppConfig:
    return compose_config(env={})



# -- job overrides ----------------------------------------------------------------------

def job(**kw):
    d = {"image": IMG, "audio": AUD, "seed": 7}
    d.update(kw)
    return parse_job_input(d)


def test_job_defaults_from_preset(cfg):
    r = apply_job_overrides(cfg, job())
    assert (r.sampler, r.sample_steps, r.sample_shift, r.text_guide_scale, r.audio_guide_scale) == (
        "fast", 8, 2.0, 1.0, 2.0)
    assert (r.frame_num, r.motion_frame, r.size, r.mode, r.seed, r.output_target) == (
        81, 9, "infinitetalk-480", "streaming", 7, "local")
    assert r.speakers == 1 and r.audio_type is None and r.lora_file == cfg.sampler_presets["fast"].lora_file
    q = apply_job_overrides(cfg, job(sampler="quality", mode="clip"))
    assert (q.sampler, q.sample_steps, q.sample_shift, q.text_guide_scale, q.audio_guide_scale, q.mode) == (
        "quality", 40, 7.0, 5.0, 4.0, "clip")
    assert q.lora_file is None
    json.dumps(r.to_dict())
    r2 = apply_job_overrides(cfg, parse_job_input({"image": IMG, "audio": AUD}))
    assert 0 <= r2.seed < 2**32


def test_job_overrides_allow_list(cfg):
    r = apply_job_overrides(cfg, job(sampler="turbo", sample_steps=6, text_guide_scale=1.5, use_teacache=True,
                                     teacache_thresh=0.4, guidance_every=2, frame_num=41, motion_frame=5, max_duration_s=12,
                                     color_correction_strength=0.2, mode="streaming",
                                     output={"target": "inline", "key_prefix": "x/"}))
    assert (r.sampler, r.sample_steps, r.sample_shift, r.text_guide_scale, r.audio_guide_scale) == (
        "turbo", 6, 2.0, 1.5, 2.0)
    assert r.use_teacache and r.teacache_thresh == 0.4 and (r.frame_num, r.motion_frame) == (41, 5)
    assert r.guidance_every == 2 and apply_job_overrides(cfg, job(sampler="turbo")).guidance_every == 1
    assert r.lora_file and r.output_target == "inline" and r.key_prefix == "x/"
    assert r.max_duration_s == 12 and r.color_correction_strength == 0.2 and r.mode == "streaming"
    # the only way in is JobInput: anything else is refused before reaching the config
    with pytest.raises(JobError):
        parse_job_input({"image": IMG, "audio": AUD, "model": "infinitetalk_multi"})
    with pytest.raises(JobError):
        parse_job_input({"image": IMG, "audio": AUD, "overrides": ["gpu=h100_80"]})


def test_job_default_steps_env_only_for_default_preset():
    c = compose_config(env={"DEFAULT_SAMPLE_STEPS": "12"})
    assert apply_job_overrides(c, job()).sample_steps == 12
    assert apply_job_overrides(c, job(sampler="turbo")).sample_steps == 4
    assert apply_job_overrides(c, job(sample_steps=3)).sample_steps == 3


def test_job_limits(cfg):
    def refused(j, c=cfg):
        with pytest.raises(JobError) as ei:
            apply_job_overrides(c, j)
        assert ei.value.code is ErrorCode.E_INPUT_VALIDATION
        return ei.value

    e = refused(job(size="infinitetalk-720"))  # cpu tier max 480
    assert e.details["errors"][0]["field"] == "size"
    assert apply_job_overrides(compose_config(["gpu=h100_80"], env={}), job(size="infinitetalk-720", sampler="quality")).sample_shift == 11.0
    refused(job(motion_frame=81))  # preset frame_num is 81
    # against the preset's value, the field the job set is the one named, with a hint that fixes it
    for given, expect in (({"motion_frame": 81}, "motion_frame"), ({"frame_num": 5}, "frame_num")):
        e = refused(job(**given))
        assert e.details["errors"][0]["field"] == expect and expect in e.hint and "motion_frame <" in e.hint
    refused(job(output={"target": "s3"}))  # no bucket configured
    single = compose_config(["model=infinitetalk_single"], env={})
    refused(job(audio={"person1": AUD, "person2": AUD}, audio_type="add"), single)
    two = apply_job_overrides(cfg, job(audio={"person1": AUD, "person2": AUD}, audio_type="para"))
    assert two.speakers == 2 and two.audio_type == "para"
    short = compose_config(["server.max_duration_s=60"], env={})
    refused(job(max_duration_s=120), short)


# -- the engine's settings, field by field -----------------------------------------------

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


def test_silence_handling_is_off_by_default_and_its_settings_reach_the_engine():
    s = generation_settings(resolved())
    assert (s.silence_handling, s.silence_threshold_db, s.silence_min_s, s.silence_audio_guide_scale) == (
        False, -45.0, 0.3, 1.0)
    s = generation_settings(resolved(silence_handling=True, silence_threshold_db=-50, silence_min_s=0.5,
                                     silence_audio_guide_scale=1.5))
    assert (s.silence_handling, s.silence_threshold_db, s.silence_min_s, s.silence_audio_guide_scale) == (
        True, -50.0, 0.5, 1.5)


def test_dub_strength_defaults_to_sampling_from_noise_and_reaches_the_engine():
    assert generation_settings(resolved()).dub_strength == 1.0
    job = parse_job_input({"video": "/runpod-volume/a.mp4", "audio": "/runpod-volume/a.wav", "dub_strength": 0.6})
    assert generation_settings(apply_job_overrides(compose_config(), job)).dub_strength == 0.6
