"""Every example payload through the real stack: the local endpoint and moto_server run as processes,
runpod-python's `Endpoint` submits, the tiny model renders, and the MP4 is fetched back from S3 by URL."""
from __future__ import annotations

import base64
import json
import mimetypes
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import handler_server, stop_process
from tests.worker.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY, free_port
from worker.media.mux import probe_mp4

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.json"))
BUCKET = "results"
SECRET_KEY = "e2e-secret-0f9a7c"


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def as_remote_payload(name: str) -> dict:
    """The example with its local media inlined as data: URIs and the result sent to S3."""
    payload = json.loads((EXAMPLES / name).read_text())["input"]
    for key in ("image", "video"):
        if key in payload:
            payload[key] = data_uri(EXAMPLES / payload[key])
    audio = payload.get("audio")  # absent in tts examples
    if isinstance(audio, dict):
        payload["audio"] = {k: data_uri(EXAMPLES / v) for k, v in audio.items()}
    elif audio is not None:
        payload["audio"] = data_uri(EXAMPLES / audio)
    payload["output"] = {"target": "s3", "key_prefix": "e2e"}
    payload.setdefault("sampler", "turbo")
    return payload


@pytest.fixture(scope="module")
def stack(tmp_path_factory, moto_server):
    tmp = tmp_path_factory.mktemp("e2e")
    moto_server.client().create_bucket(Bucket=BUCKET)
    env = {
        "INFINITETALK_OVERRIDES": json.dumps(
            [f"server.cache_dir={tmp / 'cache'}", f"server.work_dir={tmp / 'work'}", "server.log_level=INFO"]
        ),
        "S3_ENDPOINT": moto_server.endpoint,
        "S3_BUCKET": BUCKET,
        "S3_ACCESS_KEY": TEST_ACCESS_KEY,
        "S3_SECRET_KEY": SECRET_KEY,
        "S3_REGION": "us-east-1",
    }
    srv = handler_server(env, tmp)
    yield srv, moto_server, tmp
    srv.stop()


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_example_through_endpoint_client(stack, name):
    srv, moto, _ = stack
    endpoint = srv.endpoint()
    job = endpoint.run(as_remote_payload(name))
    stages: list[str] = []
    deadline = time.monotonic() + 240
    while True:
        st = job._fetch_job()
        out = st.get("output")
        if st["status"] == "IN_PROGRESS" and isinstance(out, dict) and "stage" in out:
            if not stages or stages[-1] != out["stage"]:
                stages.append(out["stage"])
        if st["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            break
        assert time.monotonic() < deadline, f"job stuck: {st}"
        time.sleep(0.05)
    assert st["status"] == "COMPLETED", st
    result = st["output"]
    order = ["validate", "download", "audio", "load", "encode", "sampling", "decode", "mux", "upload", "done"]
    assert "sampling" in stages, stages
    assert stages == sorted(stages, key=order.index), stages
    assert result["storage"] == "s3" and result["key"].startswith("e2e/")
    video = httpx.get(result["video_url"], timeout=30)
    assert video.status_code == 200
    path = stack[2] / f"{name}.mp4"
    path.write_bytes(video.content)
    probe = probe_mp4(path)
    assert (probe.video_codec, probe.audio_codec, probe.fps) == ("h264", "aac", 25)
    assert probe.duration_s == pytest.approx(result["duration_s"], abs=1e-3)
    assert SECRET_KEY not in json.dumps(result)
    print(name, result["timings_s"])


def test_failed_job_reports_code_and_hint(stack):
    srv, _, _ = stack
    job = srv.endpoint().run({"image": "https://10.0.0.1/x.png", "audio": "https://10.0.0.1/a.wav"})
    deadline = time.monotonic() + 60
    while (st := job._fetch_job())["status"] not in ("COMPLETED", "FAILED"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert st["status"] == "FAILED"
    err = json.loads(st["error"])
    assert err["code"] == "E_INPUT_VALIDATION" and err["hint"] and "10.0.0.1" in err["message"]


def test_one_job_through_the_sdk_rp_serve_api(tmp_path):
    """The SDK's own local server runs the same handler (it has no progress: it runs on status)."""
    port = free_port()
    env = {
        **os.environ,
        "INFINITETALK_OVERRIDES": json.dumps([f"server.cache_dir={tmp_path / 'cache'}", f"server.work_dir={tmp_path / 'w'}"]),
        "INFINITETALK_PRELOAD": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.handler", "--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                httpx.get(base + "/docs", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        payload = as_remote_payload("single_image.json") | {"output": {"target": "inline"}}
        r = httpx.post(base + "/runsync", json={"input": payload}, timeout=240)
        body = r.json()
        assert body["status"] == "COMPLETED", body
        mp4 = tmp_path / "out.mp4"
        mp4.write_bytes(base64.b64decode(body["output"]["video_base64"]))
        assert probe_mp4(mp4).video_codec == "h264"
    finally:
        stop_process(proc, timeout=20)


def test_test_input_flag_runs_one_job(tmp_path):
    payload = json.loads((EXAMPLES / "single_image.json").read_text())["input"]
    payload = payload | {
        "image": str(EXAMPLES / payload["image"]),
        "audio": str(EXAMPLES / payload["audio"]),
        "sampler": "turbo",
        "output": {"target": "inline"},
    }
    env = {
        **os.environ,
        "INFINITETALK_OVERRIDES": json.dumps(
            [f"server.cache_dir={tmp_path / 'cache'}", f"server.work_dir={tmp_path / 'w'}", f"server.allowed_roots=[{EXAMPLES}]"]
        ),
    }
    res = subprocess.run(
        [sys.executable, "-m", "worker.handler", "--test_input", json.dumps({"input": payload})],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "video_base64" in res.stdout + res.stderr
