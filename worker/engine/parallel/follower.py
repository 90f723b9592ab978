"""A follower rank: `python -m worker.engine.parallel.follower --rank r --world n --store path ...`.

Started by the leader (`leader.RankGroup`), one per extra GPU. It joins the process group, loads the
engine it is sent onto its own GPU, then runs every job the leader sends with the same inputs, so that
its DiT and VAE calls meet the leader's collectives; its frames are dropped. It exits when its stdin
closes (the leader is gone), and after any failure that leaves the group unusable.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from worker.engine.errors import GenerationCancelled
from worker.engine.parallel.context import ParallelContext
from worker.engine.parallel.protocol import ABORT, CANCEL, GO, LeaderAbort, broadcast_word, read_message
from worker.engine.parallel.streams import follower_request


def _say(line: str) -> None:
    sys.stdout.write(line.replace("\n", " ") + "\n")
    sys.stdout.flush()


def _should_cancel() -> bool:
    word = broadcast_word(GO)
    if word == ABORT:
        raise LeaderAbort("the leader stopped the job")
    return word == CANCEL


def _on_step(_info) -> None:
    if broadcast_word(GO) == ABORT:
        raise LeaderAbort("the leader stopped the job")


def _exit_with_leader(leader: int) -> None:
    """Exit when the leader process is gone, even while blocked in a collective or the rendezvous (where
    stdin's end-of-file is never read): no follower outlives its worker."""
    while True:
        time.sleep(1.0)
        if os.getppid() != leader:
            os._exit(3)


def main() -> int:
    threading.Thread(target=_exit_with_leader, args=(os.getppid(),), daemon=True, name="leader-watch").start()
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    inbox = sys.stdin.buffer
    if args.backend == "nccl":
        torch.cuda.set_device(args.rank)
    dist.init_process_group(args.backend, init_method=f"file://{args.store}", rank=args.rank,
                            world_size=args.world, timeout=timedelta(seconds=args.timeout))
    try:
        init = read_message(inbox)
        if init is None:
            return 0
        _, layout, options, method = init
        from worker.engine.parallel.leader import make_parallel
        from worker.engine.runtime import Engine

        engine = make_parallel(Engine.load(layout, options), ParallelContext.from_process_group(method))
        _say("ready")
        while True:
            msg = read_message(inbox)
            if msg is None or msg[0] == "stop":
                return 0
            _, number, request, resume = msg
            try:
                for _chunk in engine.generate(follower_request(request), on_step=_on_step,
                                              should_cancel=_should_cancel, resume=resume):
                    pass
                _say(f"done {number}")
            except (GenerationCancelled, LeaderAbort) as exc:  # stopped in step with the leader: still usable
                _say(f"done {number} {type(exc).__name__}")
            except BaseException as exc:  # the group is out of step now: leave, the leader restarts it
                traceback.print_exc(file=sys.stderr)
                _say(f"fail {number} {type(exc).__name__}: {exc}")
                return 1
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
