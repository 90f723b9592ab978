"""`infinitetalk run` as a user runs it: a payload file with relative paths and Hydra overrides."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from worker.mux import probe_mp4

REPO = Path(__file__).resolve().parents[2]


def run_cli(tmp_path, *args):
    overrides = [f"server.cache_dir={tmp_path / 'cache'}", f"server.work_dir={tmp_path / 'w'}", f"storage.local.root={tmp_path / 'out'}"]
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "run", *args, *overrides, "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_run_example_with_overrides_writes_mp4(tmp_path):
    res = run_cli(tmp_path, "examples/single_image.json", "sampler=turbo", "gpu=cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["config"]["sampler"] == "turbo" and out["config"]["sample_steps"] == 4
    assert probe_mp4(out["video_path"]).audio_codec == "aac"
    assert Path(out["video_path"]).is_relative_to(tmp_path / "out")


def test_run_reports_a_coded_error_and_exit_status(tmp_path):
    payload = tmp_path / "bad.json"
    payload.write_text(json.dumps({"input": {"image": "media/none.png", "audio": "a.wav", "sampler": "nope"}}))
    res = run_cli(tmp_path, str(payload))
    assert res.returncode == 1
    assert json.loads(res.stdout)["error"]["code"] == "E_INPUT_VALIDATION"
    assert "Traceback" not in res.stderr


def test_schema_command_prints_json_schema():
    res = subprocess.run([sys.executable, "-m", "worker.cli", "schema"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert json.loads(res.stdout)["title"] == "InfiniteTalk job input"
