"""A multi-rank engine on the CPU (gloo): the worker's process is rank 0 and starts a real follower process
(`python -m worker.engine.parallel.follower`) that loads the same tiny checkpoint. Jobs give the
single-process frames; a follower killed or frozen mid-job fails that job with `RankFailedError` in bounded
time, leaves no process behind, and the next job runs on a restarted group; a cancel stops every rank at the
same step without a restart."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from PIL import Image

from worker.engine.errors import GenerationCancelled
from worker.engine.parallel.leader import ParallelEngine, RankFailedError
from worker.engine.runtime import Engine, EngineOptions, EngineRequest
from testkit.tiny import ensure_tiny_checkpoint
from tests.engine.test_runtime import request as runtime_request

TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny") / "tiny"


@pytest.fixture(scope="module")
def layout(tiny_root):
    return ensure_tiny_checkpoint(tiny_root)


def request(**settings) -> EngineRequest:
    """One second of the runtime tests' speech-like tone, in 9-frame chunks."""
    return runtime_request(1.0, **{"frame_num": 9, **settings})


def frames(chunks) -> np.ndarray:
    return np.concatenate([c.frames_uint8 for c in chunks])


@pytest.fixture(scope="module")
def reference(layout):
    return frames(Engine.load(layout).generate(request()))


@pytest.fixture(scope="module")
def parallel(layout):
    options = EngineOptions()
    engine = ParallelEngine.start(Engine.load(layout, options), 2, "auto", layout, options, timeout_s=TIMEOUT_S)
    yield engine
    pids = [p.pid for p in engine.group.procs]
    engine.close()
    assert not dist.is_initialized()
    for pid in pids:
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Running (a zombie whose parent is gone counts as exited: only its table entry is left)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def _same_video(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    # the banded VAE decode rounds differently from a whole-frame one: a truncated byte may move by one
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_two_ranks_render_the_single_process_frames(parallel, reference):
    _same_video(frames(parallel.generate(request())), reference)
    # a random seed is drawn once, by the leader: the ranks agree (else the collectives would mismatch shapes
    # or the frames would be noise); the run completes and renders the same length
    assert frames(parallel.generate(request(seed=-1))).shape == reference.shape


def _source_frames(n: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(4)
    return [Image.fromarray(rng.integers(0, 256, (160, 120, 3), dtype=np.uint8)) for _ in range(n)]


def test_dubbing_frames_reach_the_followers_as_the_leader_reads_them(parallel, layout):
    """A one-pass frame iterator (a source video) exists on the leader only; the followers get each frame
    when the loop pulls it and render what one process renders from the same frames."""
    single = frames(Engine.load(layout).generate(replace(request(), cond=_source_frames())))
    got = frames(parallel.generate(replace(request(), cond=iter(_source_frames()))))
    _same_video(got, single)
    assert np.abs(got.astype(int) - frames(parallel.generate(request())).astype(int)).max() > 10  # frames mattered


def test_every_rank_merges_the_jobs_own_loras_and_takes_them_off(parallel, layout, tmp_path):
    """`loras` reach the followers with the request: each rank merges into its own DiT copy, so the group renders
    what one process renders with them, and the next job without them renders the plain frames again."""
    from testkit.tiny import write_tiny_lora

    write_tiny_lora(tmp_path / "style.safetensors", "fusionx", 101)
    textured = replace(request(color_correction_strength=0.0), cond=_source_frames(1)[0])
    styled = replace(textured, user_loras=((str(tmp_path / "style.safetensors"), 1.5),))
    single = Engine.load(layout)
    want_plain, want_styled = frames(single.generate(textured)), frames(single.generate(styled))
    _same_video(frames(parallel.generate(styled)), want_styled)
    _same_video(frames(parallel.generate(textured)), want_plain)
    assert np.abs(want_styled.astype(int) - want_plain.astype(int)).mean() > 0.5  # the LoRA mattered


def test_cancel_stops_every_rank_at_the_same_step(parallel, reference):
    pids = [p.pid for p in parallel.group.procs]
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(GenerationCancelled):
        list(parallel.generate(request(), should_cancel=cancel))
    _same_video(frames(parallel.generate(request())), reference)
    assert [p.pid for p in parallel.group.procs] == pids  # no restart was needed


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_a_lost_rank_fails_the_job_and_the_next_job_runs(parallel, reference, sig):
    victim = parallel.group.procs[0]

    def on_step(info) -> None:
        if info.step == 0 and info.chunk == 0:
            os.kill(victim.pid, sig)

    start = time.monotonic()
    with pytest.raises(RankFailedError) as err:
        list(parallel.generate(request(), on_step=on_step))
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT_S + 30, elapsed
    assert "rank" in str(err.value)
    if sig == signal.SIGKILL:
        assert "rank 1 of 2 exited" in str(err.value)
    # the next job restarts the group: the old follower is gone, a new one renders the same frames
    _same_video(frames(parallel.generate(request())), reference)
    assert victim.poll() is not None
    assert parallel.group.procs[0].pid != victim.pid


def test_a_group_that_cannot_restart_asks_for_a_fresh_worker(tmp_path, parallel):
    """The restart after a lost rank fails (here: a weight file vanished, so the new follower cannot load):
    the job fails with a RankFailedError that asks Runpod to replace the worker, and nothing is left running.
    (A process has one default process group: the module's engine is closed meanwhile and restarts on use.)"""
    parallel.close()
    layout = ensure_tiny_checkpoint(tmp_path / "tiny")
    options = EngineOptions()
    engine = ParallelEngine.start(Engine.load(layout, options), 2, "auto", layout, options, timeout_s=TIMEOUT_S)
    try:
        victim = engine.group.procs[0]
        with pytest.raises(RankFailedError) as first:
            list(engine.generate(request(), on_step=lambda info: os.kill(victim.pid, signal.SIGKILL)))
        assert not first.value.refresh_worker  # a restart is tried first
        layout.dit_files[0].unlink()
        with pytest.raises(RankFailedError) as second:
            list(engine.generate(request()))
        assert second.value.refresh_worker and "could not be restarted" in str(second.value)
        assert engine.group.procs == [] and not dist.is_initialized()
        assert victim.poll() is not None
    finally:
        engine.close()


_LEADER = """
import sys, time
from pathlib import Path
from worker.engine.parallel.leader import RankGroup
from worker.engine.runtime import EngineOptions
from testkit.tiny import ensure_tiny_checkpoint
group = RankGroup(2, "auto", ensure_tiny_checkpoint(Path(sys.argv[1])), EngineOptions(), timeout_s=15)
group.start(wait=False)
print(group.procs[0].pid, flush=True)
time.sleep(600)
"""


def test_followers_exit_when_the_worker_dies(tiny_root, layout):
    """The worker process is killed while its follower is still loading (not reading its pipe): the follower
    sees its parent gone and exits within seconds."""
    repo = Path(__file__).resolve().parents[2]
    leader = subprocess.Popen([sys.executable, "-c", _LEADER, str(tiny_root)], stdout=subprocess.PIPE, cwd=repo)
    try:
        follower = int(leader.stdout.readline())
        assert _alive(follower)
    finally:
        leader.kill()
        leader.wait()
        leader.stdout.close()
    deadline = time.monotonic() + 20
    while _alive(follower) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(follower)
