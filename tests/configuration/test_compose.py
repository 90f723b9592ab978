import dataclasses
import json

import pytest
import yaml

from configuration import OVERRIDES_ENV_VAR, AppConfig, ConfigError, compose_config, default_conf_dir, secret_values

CONF = default_conf_dir()
IMG = "https://example.com/face.png"
AUD = "https://example.com/a.wav"


@pytest.fixture(scope="module")
def cfg() -> AppConfig:
    return compose_config(env={})



def test_defaults(cfg):
    # the user's guide's preset (8 steps, text guidance off) and the whole speech by default
    assert cfg.choices == {"model": "tiny", "gpu": "cpu", "sampler": "fast", "storage": "local",
                           "deploy": "default"}
    assert cfg.model.kind == "tiny" and cfg.gpu.device == "cpu"
    assert cfg.sampler.sample_steps == 8 and cfg.sampler.text_guide_scale == 1.0
    assert cfg.sampler.audio_guide_scale == 2.0 and (cfg.sampler.shift_480, cfg.sampler.shift_720) == (2.0, 2.0)
    assert cfg.job_defaults.mode == "streaming"
    q = cfg.sampler_presets["quality"]
    assert q.sample_steps == 40 and q.text_guide_scale == 5.0
    assert q.audio_guide_scale == 4.0 and (q.shift_480, q.shift_720) == (7.0, 11.0)
    assert cfg.storage.target == "local" and cfg.storage.s3.bucket is None
    assert cfg.server.allow_loopback_hosts == [] and cfg.server.allow_http is False
    assert cfg.job_defaults.size == "infinitetalk-480" and cfg.job_defaults.use_teacache is False
    assert set(cfg.sampler_presets) == {"quality", "fast", "turbo", "lightning"}
    assert cfg.model.ckpt_dir.startswith(cfg.server.cache_dir)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sampler.sample_steps = 3  # type: ignore[misc]


def test_every_option_extends_its_base_and_composes():
    for group in ("model", "gpu", "sampler", "storage", "deploy"):
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert options, group
        for opt in options:
            data = yaml.safe_load((CONF / group / f"{opt}.yaml").read_text())
            # the schema's base, or another option of the group (a variant: base plus its changes)
            parent = opt
            while (defaults := yaml.safe_load((CONF / group / f"{parent}.yaml").read_text())["defaults"]) != [
                    f"base_{group}", "_self_"]:
                assert len(defaults) == 2 and defaults[1] == "_self_" and defaults[0] in options, (group, parent)
                parent = defaults[0]
            assert data["defaults"][-1] == "_self_", (group, opt)
            c = compose_config([f"{group}={opt}"], env={})
            assert c.choices[group] == opt


def test_overrides(cfg):
    c = compose_config(["sampler=turbo", "gpu=cpu"], env={})
    assert c.sampler.name == "turbo" and c.sampler.sample_steps == 4
    assert (c.sampler.text_guide_scale, c.sampler.audio_guide_scale, c.sampler.shift_480) == (1.0, 2.0, 2.0)
    assert c.sampler.lora_file
    f = compose_config(["sampler=fast", "gpu=h200_141"], env={})
    assert f.sampler.sample_steps == 8 and f.sampler.lora_file and f.gpu.runpod_pools == ["HOPPER_141"]
    assert compose_config(["gpu=h100_80"], env={}).gpu.price_per_hour_usd > 0
    assert compose_config(["gpu=l40s_48"], env={}).gpu.runpod_pools == ["ADA_48_PRO"]
    c = compose_config(["server.download.retries=9", "sampler.sample_steps=12"], env={})
    assert c.server.download.retries == 9 and c.sampler_presets["fast"].sample_steps == 12
    assert c.sampler_presets["turbo"].sample_steps == 4


def test_bad_overrides_are_config_errors():
    for ov in (["sampler=nope"], ["server.nope=1"], ["server.download.retries=abc"]):
        with pytest.raises(ConfigError):
            compose_config(ov, env={})


def test_env_vars_honoured():
    env = {
        "INFINITETALK_MODEL": "infinitetalk_single_fp8", "INFINITETALK_GPU": "a100_80",
        "INFINITETALK_SAMPLER": "fast", "INFINITETALK_STORAGE": "s3",
        "CKPT_DIR": "/w/base", "INFINITETALK_DIR": "/w/it.safetensors", "WAV2VEC_DIR": "/w/w2v",
        "QUANT_DIR": "/w/q", "S3_ENDPOINT": "https://s3.example.com", "S3_REGION": "eu-west-1",
        "S3_ACCESS_KEY": "AKIAEXAMPLE", "S3_SECRET_KEY": "s3cr3t-value", "S3_BUCKET": "bkt",
        "S3_PUBLIC_BASE": "https://cdn.example.com", "DEFAULT_SIZE": "infinitetalk-720",
        "DEFAULT_SAMPLE_STEPS": "12", "ENABLE_TECACHE": "true", "ENABLE_APG": "1",
    }
    c = compose_config(env=env)
    assert c.choices["model"] == "infinitetalk_single_fp8" and c.gpu.name == "a100_80"
    assert c.sampler.name == "fast" and c.storage.target == "s3"
    assert (c.model.ckpt_dir, c.model.infinitetalk_file, c.model.wav2vec_dir) == ("/w/base", "/w/it.safetensors", "/w/w2v")
    assert c.model.quant == "fp8" and c.model.quant_file == "/w/q/infinitetalk_single_fp8.safetensors"
    assert c.model.weights[0].local_dir == "/w/base"
    s3 = c.storage.s3
    assert (s3.endpoint, s3.region, s3.access_key, s3.secret_key, s3.bucket, s3.public_base) == (
        "https://s3.example.com", "eu-west-1", "AKIAEXAMPLE", "s3cr3t-value", "bkt", "https://cdn.example.com")
    assert c.job_defaults.size == "infinitetalk-720" and c.job_defaults.sample_steps == 12
    assert c.job_defaults.use_teacache is True and c.job_defaults.use_apg is True
    assert sorted(secret_values(c)) == ["AKIAEXAMPLE", "s3cr3t-value"]
    # explicit overrides beat the env's group choice
    assert compose_config(["sampler=turbo"], env=env).sampler.name == "turbo"
    # operator overrides through the env
    c = compose_config(env={OVERRIDES_ENV_VAR: json.dumps(["server.download.retries=1"])})
    assert c.server.download.retries == 1
    with pytest.raises(ConfigError):
        compose_config(env={"DEFAULT_SIZE": "infinitetalk-1080"})
    with pytest.raises(ConfigError):
        compose_config(env={OVERRIDES_ENV_VAR: "not json"})


def test_env_param_does_not_leak(monkeypatch):
    monkeypatch.setenv("S3_BUCKET", "from-process")
    assert compose_config(env={}).storage.s3.bucket is None
    assert compose_config().storage.s3.bucket == "from-process"
    import os
    assert os.environ["S3_BUCKET"] == "from-process"


def test_multi_gpu_tiers_set_their_rank_count():
    assert compose_config(["gpu=cpu"], env={}).gpu.parallel.ranks == 1  # the single-GPU path by default
    for tier, ranks in (("h100_80x8", 8), ("h200_141x4", 4), ("h200_141x8", 8)):
        par = compose_config([f"gpu={tier}"], env={}).gpu.parallel
        assert (par.ranks, par.method) == (ranks, "auto") and par.timeout_s > 0
    for bad in (["gpu.parallel.ranks=0"], ["gpu.parallel.method=tensor"],
                ["gpu=h100_80x8", "gpu.stream_blocks=4"], ["gpu=h100_80x8", "gpu.offload_vae=true"]):
        with pytest.raises(ConfigError, match="gpu.parallel"):
            compose_config(bad, env={})
