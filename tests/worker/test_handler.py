"""The Runpod handler function: output dict on success, Runpod's error shape on failure."""
from __future__ import annotations

import json

import pytest

import worker.handler as handler_mod
from worker.config import compose_config
from worker.job import JobContext


@pytest.fixture()
def ctx(tmp_path, monkeypatch):
    cfg = compose_config([f"server.cache_dir={tmp_path}/c", f"server.work_dir={tmp_path}/w", "server.fault=oom@step"])
    c = JobContext.create(cfg)
    monkeypatch.setattr(handler_mod, "_CTX", c)
    return c


def test_failure_is_a_json_error_string(ctx):
    out = handler_mod.handler({"id": "j1", "input": {"image": "ftp://x/y.png", "audio": "a.wav"}})
    err = json.loads(out["error"])
    assert err["code"] == "E_INPUT_VALIDATION" and "refresh_worker" not in out


def test_oom_asks_runpod_to_refresh_the_worker(ctx):
    from tests.worker.test_e2e_endpoint import as_remote_payload

    out = handler_mod.handler({"id": "j2", "input": as_remote_payload("single_image.json") | {"output": {"target": "inline"}}})
    assert json.loads(out["error"])["code"] == "E_OOM" and out["refresh_worker"] is True


def test_handler_module_does_not_start_the_sdk_on_import():
    assert handler_mod.__name__ == "worker.handler" and callable(handler_mod.main)


def test_gpu_tier_environment_is_set_before_the_engine_and_the_endpoints_own_value_wins():
    env: dict[str, str] = {}
    assert handler_mod.apply_process_env(compose_config(["gpu=rtx4090_24"]), env) == {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"
    }
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    own = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    assert handler_mod.apply_process_env(compose_config(["gpu=rtx4090_24"]), own) == {}
    assert own == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    assert handler_mod.apply_process_env(compose_config(["gpu=h100_80"]), {}) == {}
