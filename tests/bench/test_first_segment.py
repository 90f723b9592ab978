"""bench/first_segment.py for real at tiny size on the CPU: it times a streaming job's first chunk and the
first playable segment of its preview, in order, and every chunk gets its segment."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_first_segment_follows_the_first_chunk(tmp_path):
    out = tmp_path / "first.json"
    cmd = [sys.executable, str(REPO / "bench" / "first_segment.py"), "--tiny", "--audio-s", "7",
           "--cache", str(tmp_path / "cache"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["chunks"] == r["segments"] == 3  # 7 s: 81 + 72 + 22 frames
    assert 0 < r["first_chunk_s"] < r["first_segment_s"] < r["job_s"]
    assert abs(r["segment_after_chunk_s"] - (r["first_segment_s"] - r["first_chunk_s"])) < 0.002
    assert len(r["segment_after_chunk_all_s"]) == 3 and all(x > 0 for x in r["segment_after_chunk_all_s"])
    assert r["video_s"] == 7.0 and r["size"] == [32, 48]
