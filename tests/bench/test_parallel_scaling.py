"""bench/parallel_scaling.py launched the way it is on a GPU machine (torchrun, one process per rank), at tiny
size on the CPU with gloo: every rank count is measured, efficiencies are derived from the one-rank
baseline, and the parallel DiT output equals the single-rank one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "parallel_scaling.py"


def test_scaling_bench_runs_under_torchrun(tmp_path):
    out = tmp_path / "scaling.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           "--tiny", "--counts", "1,2,4", "--warmup", "1", "--iters", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["world"] == 2 and data["tiny"] is True
    results = data["results"]
    assert [r["ranks"] for r in results] == [1, 2]  # 4 is more than were launched: skipped
    assert results[0]["method"] == "single" and results[1]["method"] == "ulysses"
    for r in results:
        assert r["dit_forward_s"] > 0 and r["chunk_s"] > r["chunk_dit_s"] > 0 and r["frames"] == 9
        assert r["max_rel_diff_vs_1"] <= 1e-5
        assert r["dit_efficiency"] == round(results[0]["dit_forward_s"] / (r["ranks"] * r["dit_forward_s"]), 4)
        assert 0 < r["outside_dit_share"] < 1
    assert results[0]["dit_efficiency"] == 1.0
    assert "ranks" in proc.stdout and "outside DiT" in proc.stdout  # the printed table
