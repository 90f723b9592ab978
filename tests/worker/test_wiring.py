"""Config fields reach the stages' typed settings unchanged."""
from __future__ import annotations

from pathlib import Path

from worker.config import compose_config
from worker.wiring import checkpoint_layout, engine_options, fetch_policy, media_limits, storage_settings


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
