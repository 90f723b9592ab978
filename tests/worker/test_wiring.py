"""Config fields reach the stages' typed settings unchanged."""
from __future__ import annotations

from pathlib import Path

import pytest

from configuration import compose_config
from worker.wiring import checkpoint_layout, engine_options, fetch_policy, media_limits, process_env, storage_settings


def test_fetch_policy_follows_server_settings(tmp_path):
    cfg = compose_config(["server.allow_loopback_hosts=[127.0.0.1]", "server.download.retries=5", "server.allow_http=true"])
    p = fetch_policy(cfg, extra_roots=[tmp_path])
    assert p.net.allow == ("127.0.0.1",) and p.attempts == 5 and p.allow_http
    assert Path("/runpod-volume") in p.volume_roots and tmp_path in p.volume_roots
    assert p.cap("image") == cfg.server.download.max_image_bytes


def test_loopback_is_refused_by_default():
    p = fetch_policy(compose_config())
    assert p.net.allow == () and not p.allow_http


def test_s3_settings_carry_secrets_as_secrets():
    cfg = compose_config(env={"S3_BUCKET": "b", "S3_ACCESS_KEY": "AKIA1", "S3_SECRET_KEY": "sekrit", "S3_ENDPOINT": "https://s3.example"})
    st = storage_settings(cfg, "s3", key_prefix="p/", presign_expiry_s=600)
    assert st.kind == "s3" and st.s3.bucket == "b" and st.s3.presign_expiry_s == 600 and st.s3.key_prefix == "p/"
    assert st.s3.secret_key.get_secret_value() == "sekrit" and "sekrit" not in repr(st)


def test_layout_and_engine_options_from_model_and_gpu():
    cfg = compose_config(["model=infinitetalk_single", "gpu=h100_80"], env={"CKPT_DIR": "/w/ckpt"})
    assert checkpoint_layout(cfg).ckpt_dir == Path("/w/ckpt")
    opts = engine_options(cfg)
    assert opts["device"] == "cuda" and opts["dtype"] == "bfloat16"


def test_media_limits_follow_caps():
    cfg = compose_config(["server.max_image_pixels=1000"])
    assert media_limits(cfg).max_image_pixels == 1000


def test_24gb_tier_composes_and_its_placement_reaches_the_engine_options():
    cfg = compose_config(["gpu=rtx4090_24"])
    opts = engine_options(cfg)
    assert (opts["offload_t5"], opts["offload_clip"], opts["offload_vae"]) == (True, True, True)
    assert 32 <= opts["stream_blocks"] <= 36 and opts["batch_passes"] is False and opts["quant"] == "none"
    assert process_env(cfg) == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert cfg.gpu.max_size == "infinitetalk-480"
    # the other tiers keep batched passes and the allocator's defaults
    for tier in ("l40s_48", "h100_80", "cpu"):
        other = compose_config([f"gpu={tier}"])
        assert engine_options(other)["batch_passes"] is True and process_env(other) == {}


def test_fp8_model_sets_quant_and_the_quant_file_only_for_fp8():
    cfg = compose_config(["model=infinitetalk_single_fp8", "gpu=rtx4090_24"], env={"QUANT_DIR": "/w/q"})
    assert engine_options(cfg)["quant"] == "fp8"
    layout = checkpoint_layout(cfg)
    assert layout.quant_file == Path("/w/q/infinitetalk_single_fp8.safetensors")
    assert layout.dit_sources == [layout.quant_file]  # neither base shards nor adapter are needed
    bundled = compose_config(["model=infinitetalk_single_fp8"], env={"INFINITETALK_DIT_BUNDLE": "/b/fp8.safetensors"})
    assert checkpoint_layout(bundled).dit_sources == [Path("/b/fp8.safetensors")]  # our bundle wins
    plain = compose_config(["model=infinitetalk_single"])
    assert engine_options(plain)["quant"] == "none" and checkpoint_layout(plain).quant_file is None


def test_compile_caches_go_to_the_volume_only_for_compiling_tiers_with_a_volume(tmp_path):
    vol = f"server.volume_root={tmp_path}"
    env = process_env(compose_config(["gpu=h100_80", vol]))
    assert env == {"TORCHINDUCTOR_CACHE_DIR": f"{tmp_path}/cache/torch-compile/inductor",
                   "TRITON_CACHE_DIR": f"{tmp_path}/cache/torch-compile/triton"}
    assert process_env(compose_config(["gpu=h100_80", f"server.volume_root={tmp_path}/absent"])) == {}
    assert process_env(compose_config(["gpu=h100_80", vol, "server.compile_cache_dir=off"])) == {}
    assert process_env(compose_config(["gpu=h100_80", vol], env={"INFINITETALK_COMPILE_CACHE_DIR": "/x"}))[
        "TORCHINDUCTOR_CACHE_DIR"] == "/x/inductor"
    assert process_env(compose_config(["gpu=cpu", vol])) == {}  # nothing compiles on the CPU tier
    tiers = {p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "gpu").glob("*.yaml")} - {"base_gpu"}
    for tier in sorted(tiers):  # each compiling tier gets the caches, the others not
        cfg = compose_config([f"gpu={tier}", vol])
        assert ("TRITON_CACHE_DIR" in process_env(cfg)) == (cfg.gpu.compile and cfg.gpu.device != "cpu"), tier


def test_hopper_tiers_run_fp8_linears_whatever_the_model_variant():
    """`gpu=h100_80 sampler=turbo` gets the tier's fastest measured defaults without naming the fp8 model."""
    for tier in ("h100_80", "h200_141", "h200_141x4", "h100_80x8"):
        cfg = compose_config([f"gpu={tier}", "sampler=turbo", "model=infinitetalk_single"])
        opts = engine_options(cfg)
        assert (opts["quant"], opts["attention"]) == ("fp8", "auto"), tier
        assert checkpoint_layout(cfg).quant_file is None  # bf16 files, quantised at load
    assert engine_options(compose_config(["gpu=h100_80", "gpu.quant=model"]))["quant"] == "none"
    assert engine_options(compose_config(["gpu=h100_80", "gpu.quant=none", "model=infinitetalk_single_fp8"]))["quant"] == "none"
    for tier in ("l40s_48", "a100_80", "rtx4090_24", "cpu"):  # no measured fp8 win there: the model decides
        assert compose_config([f"gpu={tier}"]).gpu.quant == "model"
        assert engine_options(compose_config([f"gpu={tier}", "model=infinitetalk_single_fp8"]))["quant"] == "fp8"


def test_an_unknown_gpu_quant_is_a_config_error():
    from configuration import ConfigError

    with pytest.raises(ConfigError, match="gpu.quant"):
        compose_config(["gpu=h100_80", "gpu.quant=int4"])


def test_lora_cache_is_on_the_volume_when_mounted_and_never_an_input(tmp_path):
    from worker.wiring import lora_cache_dir

    cfg = compose_config([f"server.volume_root={tmp_path}", f"server.work_dir={tmp_path}/work"])
    assert lora_cache_dir(cfg) == tmp_path / "cache" / "loras"
    assert lora_cache_dir(cfg) in fetch_policy(cfg).volume_excluded  # a job cannot read the cache as media
    assert fetch_policy(cfg).cap("lora") == cfg.server.download.max_lora_bytes == 2 * 1024**3
    absent = compose_config([f"server.volume_root={tmp_path}/absent", f"server.work_dir={tmp_path}/work"])
    assert lora_cache_dir(absent) == tmp_path / "work" / "lora-cache"
    env = compose_config([], env={"INFINITETALK_LORA_CACHE_DIR": "/x/loras"})
    assert lora_cache_dir(env) == Path("/x/loras")
    assert (env.server.lora_cache_max_bytes, env.server.lora_ref_ttl_s) == (20 * 1024**3, 86400.0)
