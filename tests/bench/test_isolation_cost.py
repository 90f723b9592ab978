"""bench/isolation_cost.py run for real at tiny size on the CPU, as the GPU run does at full size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "isolation_cost.py"


def test_times_the_separation_of_a_track_per_audio_minute(tmp_path):
    out = tmp_path / "iso.json"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--minutes", "0.05", "--scale", "tiny", "--device", "cpu",
           "--batch", "1,3", "--repeats", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["scale"] == "tiny" and result["device"] == "cpu" and result["weights"] == "random"
    assert result["audio_samples"] == 3 * 44100  # 0.05 min
    # 1 s tiny segments at 25% overlap: offsets 0, 0.75 s, 1.5 s, 2.25 s
    assert result["segments"] == 4 and result["config"]["segment_samples"] == 44100
    assert [r["batch"] for r in result["runs"]] == [1, 3]
    for run in result["runs"]:
        assert len(run["times_s"]) == 2 and run["median_s"] > 0
        assert run["vocals_samples"] == result["audio_samples"] and run["vocals_finite"]
        assert run["seconds_per_audio_minute"] == round(run["median_s"] / 0.05, 4)
    best = min(result["runs"], key=lambda r: r["median_s"])
    assert result["seconds_per_audio_minute"] == best["seconds_per_audio_minute"]
    assert result["parameters"] > 0


def test_reads_converted_weights_strictly(tmp_path):
    from testkit.tiny import ensure_tiny_isolation

    weights = ensure_tiny_isolation(tmp_path)
    out = tmp_path / "iso.json"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--minutes", "0.02", "--scale", "tiny", "--device", "cpu",
           "--batch", "2", "--repeats", "1", "--weights", str(weights)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["weights"] == str(weights)
    full = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json"), "--minutes", "0.02", "--device", "cpu",
            "--weights", str(weights)]  # published size: the tiny file does not fit
    proc = subprocess.run(full, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "WeightLoadError" in proc.stderr and not (tmp_path / "x.json").exists()
