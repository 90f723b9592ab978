"""The job pipeline on a two-rank worker (gpu.parallel.ranks=2, CPU tier: gloo, tiny model): the worker's
process is rank 0 and starts a real follower process. A job renders; a follower killed mid-job fails that job
with E_RANK_FAILED in bounded time; the next job runs on a restarted follower; closing leaves no process."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.contract.test_errors import assert_human
from tests.worker.test_job import example, make_ctx, run
from contract.errors import ErrorCode, JobError
from worker.job import run_job
from worker.media.mux import probe_mp4

TIMEOUT_S = 15


@pytest.fixture(scope="module")
def ranks_ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    ctx = make_ctx(tmp, tmp / "cache", "gpu.parallel.ranks=2", f"gpu.parallel.timeout_s={TIMEOUT_S}")
    yield ctx
    if ctx.engine.loaded:
        engine = ctx.engine.get()
        pids = [p.pid for p in engine.group.procs]
        engine.close()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_two_rank_worker_renders_then_survives_a_killed_rank(ranks_ctx):
    payload = example("single_image.json") | {"sampler": "turbo"}
    out, _ = run(ranks_ctx, payload)
    frames = probe_mp4(out["video_path"]).num_frames
    assert frames > 0

    engine = ranks_ctx.engine.get()
    victim = engine.group.procs[0]
    killed = []

    def progress(update: dict) -> None:
        if update.get("stage") == "sampling" and not killed:
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(time.monotonic())

    with pytest.raises(JobError) as info:
        run_job("kill-a-rank", payload, ranks_ctx, progress)
    assert killed and time.monotonic() - killed[0] < TIMEOUT_S + 30
    err = info.value
    assert err.code is ErrorCode.E_RANK_FAILED, err.to_error_string()
    assert "rank 1 of 2" in err.message
    assert_human(err)
    assert victim.poll() is not None  # reaped: no zombie left

    again, _ = run(ranks_ctx, payload, job_id="after")
    assert probe_mp4(again["video_path"]).num_frames == frames
    assert engine.group.procs[0].pid != victim.pid and engine.group.procs[0].poll() is None
