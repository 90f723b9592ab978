"""Load: concurrent jobs over HTTP to the local endpoint, and a long run of sequential jobs.

Every submitted job must be accounted for (COMPLETED, or FAILED with a coded error; none lost,
none duplicated) and /health's counters must agree. The sequential run checks that a worker's
RSS and its work folder stay flat. Counts are small by default so the suite stays fast on two
cores; RELIABILITY_CONCURRENT_JOBS / RELIABILITY_SEQUENTIAL_JOBS raise them (bench/load/README.md
has the figures of the full runs and the commands).
"""
from __future__ import annotations

import json
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.reliability.conftest import EXAMPLES, tiny_clip_payload
from tests.reliability.endpoint import LocalEndpoint

CONCURRENT = int(os.environ.get("RELIABILITY_CONCURRENT_JOBS", "8"))
SEQUENTIAL = int(os.environ.get("RELIABILITY_SEQUENTIAL_JOBS", "20"))
REPORT = os.environ.get("RELIABILITY_LOAD_REPORT")  # a JSON file to write the figures to


def _report(name: str, figures: dict) -> None:
    print(name, json.dumps(figures))
    if REPORT:
        data = json.loads(Path(REPORT).read_text()) if Path(REPORT).exists() else {}
        data[name] = figures
        Path(REPORT).write_text(json.dumps(data, indent=1))


def test_concurrent_jobs_over_http_are_all_accounted_for(tmp_path, tiny_cache):
    overrides = [f"server.cache_dir={tiny_cache}", f"server.work_dir={tmp_path / 'work'}",
                 f"storage.local.root={tmp_path / 'outputs'}", f"server.allowed_roots=[{EXAMPLES}]"]
    with LocalEndpoint(tmp_path, overrides, workers=2) as ep:
        payloads = [tiny_clip_payload(seed=i) for i in range(CONCURRENT)]
        payloads[1] = {"image": "https://10.0.0.1/x.png", "audio": "/etc/passwd"}  # one bad job among them
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(ep.submit, payloads))
        assert len(set(ids)) == len(ids)
        results = {i: ep.wait(i, timeout=900, poll=0.25) for i in ids}
        wall = time.monotonic() - start
        health = ep.health()
    statuses = [results[i]["status"] for i in ids]
    assert statuses.count("COMPLETED") == CONCURRENT - 1, statuses
    bad = results[ids[1]]
    assert bad["status"] == "FAILED" and json.loads(bad["error"])["code"] == "E_INPUT_VALIDATION"
    for i in ids:
        if results[i]["status"] == "COMPLETED":
            assert Path(results[i]["output"]["video_path"]).is_file()
    assert health["jobs"]["completed"] == CONCURRENT - 1 and health["jobs"]["failed"] == 1
    assert health["jobs"]["inQueue"] == 0 and health["jobs"]["inProgress"] == 0
    assert list((tmp_path / "work").iterdir()) == []
    _report("concurrent", {"jobs": CONCURRENT, "workers": 2, "wall_s": round(wall, 1),
                           "jobs_per_min": round(60 * CONCURRENT / wall, 1)})


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_sequential_jobs_keep_rss_and_work_folder_flat(tmp_path, make_ctx):
    from worker.job import run_job

    ctx = make_ctx(tmp_path, "storage.target=inline")
    work = Path(ctx.cfg.server.work_dir)
    rss, times = [], []
    for i in range(SEQUENTIAL):
        t = time.monotonic()
        out = run_job(f"seq-{i}", tiny_clip_payload(seed=i, output={"target": "inline"}), ctx, lambda _p: None)
        times.append(time.monotonic() - t)
        assert out["num_frames"] == 5
        rss.append(_rss_kib())
        assert _tree_bytes(work) == 0
    warm = rss[min(3, len(rss) - 1):]  # after the first jobs have filled the caches
    growth = warm[-1] - warm[0]
    _report("sequential", {"jobs": SEQUENTIAL, "rss_start_mib": round(warm[0] / 1024, 1),
                           "rss_end_mib": round(warm[-1] / 1024, 1), "rss_peak_mib": round(max(rss) / 1024, 1),
                           "rss_growth_mib": round(growth / 1024, 1), "median_job_s": round(sorted(times)[len(times) // 2], 2),
                           "max_rss_mib_ru": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                           "work_folder_bytes_after": _tree_bytes(work)})
    # Flat: no more than 40 MiB over the run (allocator noise); a leak of one 5-frame job's tensors
    # per job would show up as steady growth well past that over 200 jobs.
    assert growth < 40 * 1024, rss
