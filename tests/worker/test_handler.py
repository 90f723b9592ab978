"""The Runpod handler function: output dict on success, Runpod's error shape on failure."""
from __future__ import annotations

import json

import pytest

import worker.handler as handler_mod
from configuration import compose_config
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


# ----------------------------------------------------------------------------- unencodable input (issue 13)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Every string field of the contract, as a path of keys into the input.
STRING_FIELDS = [
    ("image",), ("cond_image",), ("video",), ("audio",), ("audio", "person1"), ("audio", "person2"), ("audio_type",),
    ("tts", "text"), ("tts", "voice"), ("tts", "voice2"), ("prompt",), ("negative_prompt",), ("n_prompt",), ("size",),
    ("mode",), ("sampler",), ("preset",), ("output", "target"), ("output", "key_prefix"), ("bbox", "<key>"),
    ("<key>",),
]
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
UNENCODABLE = st.tuples(st.text(max_size=20), SURROGATES, st.text(max_size=20)).map("".join)


def _place(path: tuple[str, ...], value: str) -> dict:
    base = {"image": "/runpod-volume/a.png", "audio": "/runpod-volume/a.wav", "prompt": "hi"}
    if path == ("<key>",):
        return base | {value: 1}
    if path == ("bbox", "<key>"):
        return base | {"bbox": {value: [0, 0, 1, 1]}}
    if len(path) == 1:
        return base | {path[0]: value}
    inner: dict = {"person1": "/runpod-volume/a.wav"} if path[0] == "audio" else ({"text": "(s1) hi (s2) yo"} if path[0] == "tts" else {})
    base.pop("audio") if path[0] == "tts" else None
    return base | {path[0]: inner | {path[1]: value}}


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(STRING_FIELDS), text=UNENCODABLE, job_id=st.one_of(st.just("j"), UNENCODABLE))
def test_unencodable_strings_in_any_field_give_a_sendable_coded_error(ctx, path, text, job_id):
    out = handler_mod.handler({"id": job_id, "input": _place(path, text)})
    wire = json.dumps(out, ensure_ascii=False).encode("utf-8")  # what UTF-8 transport needs; raises if unencodable
    err = json.loads(json.loads(wire)["error"])
    assert err["code"] == "E_INPUT_VALIDATION", err
    assert err["message"] and err["hint"]


def test_a_config_that_cannot_compose_is_still_a_coded_answer(monkeypatch):
    monkeypatch.setattr(handler_mod, "_CTX", None)
    monkeypatch.setenv("INFINITETALK_OVERRIDES", '["storage.target=ftp"]')  # refused by the config check
    out = handler_mod.handler({"id": "x", "input": {}})
    assert json.loads(out["error"])["code"] == "E_INTERNAL"


@pytest.mark.parametrize("preload_isolation", [False, True])
def test_the_isolation_model_loads_at_start_only_when_configured(tmp_path, monkeypatch, preload_isolation):
    cfg = compose_config([f"server.cache_dir={tmp_path}/c", f"server.work_dir={tmp_path}/w",
                          f"model.isolation_preload={str(preload_isolation).lower()}"])
    c = JobContext.create(cfg)
    monkeypatch.setattr(handler_mod, "_CTX", c)
    monkeypatch.setenv("INFINITETALK_PRELOAD", "1")
    handler_mod.preload()
    assert c.engine.loaded and c.engine.isolation_loaded is preload_isolation
