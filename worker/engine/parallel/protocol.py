"""What the leader (rank 0, the worker's own process) and its follower ranks say to each other.

Between jobs the followers wait on their stdin pipe, not in a collective: an idle worker must not run
into the process group's timeout, and a follower whose leader dies sees end-of-file and exits (no
process outlives the worker). Messages are length-prefixed pickles; followers answer with one line each
("ready", "done <n>", "fail <n> <reason>") on stdout. Inside a job, the per-step control words travel as
collectives so that every rank stops at the same step.
"""
from __future__ import annotations

import pickle
import struct
from typing import IO, Any

import torch
import torch.distributed as dist

_LEN = struct.Struct("<Q")

# Control words broadcast by the leader at every step (should_cancel and on_step points).
GO, CANCEL, ABORT = 0, 1, 2


def write_message(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def read_message(stream: IO[bytes]) -> Any:
    """The next message, or None at end of file (the leader is gone)."""
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (size,) = _LEN.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301 - only our own leader writes this pipe


def control_device() -> torch.device:
    """Where control tensors live: the current GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_word(word: int) -> int:
    """The leader's control word, on every rank (the leader passes its own, the others anything)."""
    t = torch.tensor([word], dtype=torch.int64, device=control_device())
    dist.broadcast(t, 0)
    return int(t.item())


class LeaderAbort(Exception):
    """A follower's view of a job the leader stopped (its own error, raised at a step boundary)."""
