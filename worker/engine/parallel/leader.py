"""The leader side of a multi-GPU worker: starts and supervises one follower process per extra GPU and
runs each job on all ranks at once.

The worker process is rank 0: it loads its engine as before and wraps it in `ParallelEngine`, which has the
engine's interface. Followers are this package's `follower` module in child processes; each loads the
same weights onto its own GPU. A job goes to every follower over its stdin pipe, then all ranks run the same
generation loop, their DiT and VAE calls meeting in collectives. Failures end in bounded time:

- a follower that dies: the next collective fails (gloo at once; NCCL at the process group's timeout) and
  its exit is seen by polling; the job fails with `RankFailedError`;
- a follower that hangs: the collective times out after `timeout_s`; same error;
- the leader's own error or cancellation between steps: broadcast as a control word at the next step
  boundary, every rank stops there and the group stays usable;
- anything that leaves ranks out of step (an error inside a forward, a consumer that drops the frame
  stream): the followers are killed and restarted before the next job (weights reload: minutes on real
  models; only on failures).
"""
from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from worker.engine.errors import GenerationCancelled, RankFailedError
from worker.engine.parallel.context import ParallelContext, attach_parallel
from worker.engine.parallel.protocol import ABORT, CANCEL, GO, broadcast_word, write_message
from worker.engine.parallel.streams import split_request
from worker.engine.parallel.vae import ParallelVAE

_log = logging.getLogger(__name__)
MAX_SEED = 99_999_999


def make_parallel(engine: Any, ctx: ParallelContext) -> Any:
    """Split `engine`'s DiT forward and VAE decode over `ctx`'s ranks (in place); returns the engine."""
    if getattr(engine.options, "stream_blocks", 0):
        raise ValueError("gpu.stream_blocks cannot be combined with several GPUs (gpu.parallel.ranks > 1)")
    if getattr(engine.options, "offload_vae", False):
        raise ValueError("gpu.offload_vae cannot be combined with several GPUs: the banded decode needs "
                         "the VAE resident")
    attach_parallel(engine.dit, ctx)
    if ctx.is_parallel and not isinstance(engine.vae, ParallelVAE):
        engine.vae = ParallelVAE(engine.vae, ctx)
    return engine


class RankGroup:
    """Follower processes 1..world-1 and the process group joining them with this process (rank 0)."""

    def __init__(self, world: int, method: str, layout: Any, options: Any, *, timeout_s: float = 600.0,
                 load_timeout_s: float = 1800.0) -> None:
        self.world = world
        self.method = method
        self.layout = layout
        self.options = options
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self.backend = "nccl" if str(options.device).startswith("cuda") else "gloo"
        self.procs: list[subprocess.Popen] = []
        self._lines: list[list[str]] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait: bool = True) -> None:
        """Spawn the followers, join the process group and send them the engine to load; `wait=False`
        returns while they load (the caller loads rank 0's engine meanwhile, then calls `wait_ready`)."""
        try:
            self._start(wait)
        except BaseException:
            self.stop()  # no follower outlives a failed start
            raise

    def _start(self, wait: bool) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="ranks-")
        store = Path(self._tmp.name) / "store"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.backend == "nccl":
            # A collective past the timeout: a follower tears itself down (1) and the leader, the worker
            # process, only aborts its communicators and raises (2), so the job ends with E_RANK_FAILED
            # instead of the worker dying. (Not yet exercised on GPUs: see docs/DESIGN.md.)
            env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        for rank in range(1, self.world):
            cmd = [sys.executable, "-m", "worker.engine.parallel.follower", "--rank", str(rank), "--world",
                   str(self.world), "--store", str(store), "--backend", self.backend, "--timeout", str(self.timeout_s)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                    start_new_session=True)  # its own process group: killed as a whole
            self.procs.append(proc)
            lines: list[str] = []
            self._lines.append(lines)
            threading.Thread(target=self._read_lines, args=(proc, lines), daemon=True,
                             name=f"rank{rank}-out").start()
        dist.init_process_group(self.backend, init_method=f"file://{store}", rank=0, world_size=self.world,
                                timeout=timedelta(seconds=self.timeout_s))
        for rank, proc in enumerate(self.procs, start=1):
            options = replace(self.options, device=self._device(rank), fault="")
            write_message(proc.stdin, ("init", self.layout, options, self.method))
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        self._wait_lines("ready", self.load_timeout_s)

    def _device(self, rank: int) -> str:
        return f"cuda:{rank}" if self.backend == "nccl" else str(self.options.device)

    @staticmethod
    def _read_lines(proc: subprocess.Popen, lines: list[str]) -> None:
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").strip())

    def _wait_lines(self, prefix: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while True:
            self.check_alive()
            if all(any(line.startswith(prefix) for line in lines) for lines in self._lines):
                for lines in self._lines:
                    lines.clear()
                return
            if time.monotonic() > end:
                raise RankFailedError(f"follower ranks did not report {prefix!r} within {timeout:.0f} s")
            time.sleep(0.05)

    def watch(self) -> threading.Event:
        """Under NCCL a collective with a dead peer blocks until the process-group timeout; this watcher
        aborts the group as soon as a follower has exited, so the blocked call fails at once. Set the
        returned event to stop watching. (gloo fails such a call by itself.) Not yet exercised on GPUs."""
        done = threading.Event()
        if self.backend != "nccl":
            return done

        def run() -> None:
            while not done.wait(0.5):
                if any(p.poll() is not None for p in self.procs):
                    from torch.distributed import distributed_c10d

                    abort = getattr(distributed_c10d, "_abort_process_group", None)
                    if abort is not None:
                        _log.error("a follower rank exited mid-job: aborting the process group")
                        abort()
                    return

        threading.Thread(target=run, daemon=True, name="rank-watch").start()
        return done

    def check_alive(self) -> None:
        for rank, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code is not None:
                tail = " / ".join(self._lines[rank - 1][-2:])
                raise RankFailedError(f"rank {rank} of {self.world} exited with code {code}" + (f" ({tail})" if tail else ""))

    def stop(self) -> None:
        """Kill every follower (and anything it started) and leave the process group; idempotent."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _log.error("follower pid %s did not exit after SIGKILL", proc.pid)
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        self.procs, self._lines = [], []
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a broken group is what we are getting rid of
                pass
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def send_job(self, number: int, request: Any, resume: bytes | None) -> None:
        self.check_alive()
        for rank, proc in enumerate(self.procs, start=1):
            try:
                write_message(proc.stdin, ("job", number, request, resume))
            except (BrokenPipeError, OSError) as exc:
                raise RankFailedError(f"rank {rank} of {self.world} cannot take the job: {exc}") from exc


class ParallelEngine:
    """An engine whose jobs run on all GPUs of the worker; the rest of its interface is the rank-0 engine's."""

    def __init__(self, engine: Any, group: RankGroup) -> None:
        self.engine = engine
        self.group = group
        self._jobs = 0
        self._healthy = True

    @classmethod
    def start(cls, engine: Any, world: int, method: str, layout: Any, options: Any, **kw) -> "ParallelEngine":
        group = RankGroup(world, method, layout, options, **kw)
        group.start(wait=False)
        return cls.attach(engine, group)

    @classmethod
    def attach(cls, engine: Any, group: RankGroup) -> "ParallelEngine":
        """Rank 0's loaded engine joined to a started group (whose followers may still be loading)."""
        try:
            group.wait_ready()
            make_parallel(engine, ParallelContext.from_process_group(group.method))
        except BaseException:
            group.stop()
            raise
        return cls(engine, group)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def close(self) -> None:
        """Stop the followers and leave the process group; a later job starts them again."""
        self.group.stop()
        self._healthy = False
        attach_parallel(self.engine.dit, ParallelContext())
        if isinstance(self.engine.vae, ParallelVAE):
            self.engine.vae = self.engine.vae.vae

    def _restart(self) -> None:
        """Kill and restart the followers; a restart that fails asks for a fresh worker."""
        _log.warning("restarting the follower ranks")
        self.group.stop()
        try:
            self.group.start()
            make_parallel(self.engine, ParallelContext.from_process_group(self.group.method))
        except BaseException as exc:
            self.group.stop()
            raise RankFailedError(f"the {self.group.world}-rank group could not be restarted: {exc}",
                                  refresh_worker=True) from exc
        self._healthy = True

    def generate(self, request: Any, *, on_step: Callable | None = None, should_cancel: Callable[[], bool] | None = None,
                 resume: bytes | None = None) -> Iterator[Any]:
        if not self._healthy:
            self._restart()
        settings = request.settings
        if settings.seed is None or settings.seed < 0:  # one seed for all ranks, drawn here
            request = replace(request, settings=replace(settings, seed=random.randint(0, MAX_SEED)))
        mine, theirs = split_request(request)
        self._jobs += 1
        self.group.send_job(self._jobs, theirs, resume)
        pending: list[BaseException] = []

        def step_cancel() -> bool:
            word = GO
            try:
                word = CANCEL if should_cancel is not None and should_cancel() else GO
            except BaseException as exc:  # noqa: BLE001 - raised after the followers are told
                pending.append(exc)
                word = ABORT
            broadcast_word(word)
            if pending:
                raise pending[-1]
            return word == CANCEL

        def step_done(info: Any) -> None:
            word = GO
            try:
                if on_step is not None:
                    on_step(info)
            except BaseException as exc:  # noqa: BLE001
                pending.append(exc)
                word = ABORT
            broadcast_word(word)
            if pending:
                raise pending[-1]

        in_step = False  # True: every rank stopped at the same step boundary, the group is still usable
        watching = self.group.watch()
        try:
            for chunk in self.engine.generate(mine, on_step=step_done, should_cancel=step_cancel, resume=resume):
                yield chunk
            in_step = True
        except GenerationCancelled:
            in_step = True
            raise
        except BaseException as exc:
            if pending and exc is pending[-1]:
                in_step = True
                raise
            failed = self._failure(exc)
            if failed is not None:
                raise failed from exc
            raise
        finally:
            watching.set()
            if not in_step:
                self._healthy = False  # followers may sit in a collective: restart before the next job
            else:
                try:
                    self.group._wait_lines("done", self.group.timeout_s)
                except RankFailedError:
                    self._healthy = False
                    raise

    def _failure(self, exc: BaseException) -> RankFailedError | None:
        """The rank failure behind a collective's error, if that is what it was."""
        try:
            time.sleep(0.2)  # a killed follower's exit status may lag its closed socket
            self.group.check_alive()
        except RankFailedError as dead:
            return dead
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, (dist.DistError, RuntimeError)) and any(
            w in text.lower() for w in ("timeout", "timed out", "connection closed", "connection reset", "nccl", "gloo")
        ):
            return RankFailedError(f"a collective of the {self.group.world}-rank group failed "
                                   f"(a rank hung past {self.group.timeout_s:.0f} s or lost its connection): {text[:300]}")
        return None
