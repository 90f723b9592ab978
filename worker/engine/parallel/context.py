"""Who this process is in a sequence-parallel job, and how its DiT splits attention.

A `ParallelContext` is a plain description (rank, world size, process group, attention method); the
process group itself is created by whoever starts the ranks (torchrun, the worker's launcher, a test).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

METHODS = ("auto", "ulysses", "ring")


def choose_method(method: str, num_heads: int, world: int) -> str:
    """`auto` -> Ulysses when the heads divide evenly over the ranks (one all-to-all each way, every rank
    runs full-sequence attention on its heads), else ring attention. `ulysses` with heads that do not
    divide is refused: it cannot split them."""
    if method not in METHODS:
        raise ValueError(f"unknown parallel method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "auto":
        return "ulysses" if num_heads % world == 0 else "ring"
    if method == "ulysses" and num_heads % world:
        raise ValueError(
            f"Ulysses attention splits heads across ranks: {num_heads} heads do not divide over {world} ranks; "
            f"use method 'ring' or a rank count that divides {num_heads}"
        )
    return method


@dataclass(frozen=True)
class ParallelContext:
    """This rank's place in the job. `group` None means the default process group."""

    rank: int = 0
    world: int = 1
    method: str = "auto"
    group: Any = None

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world}")
        if self.method not in METHODS:
            raise ValueError(f"unknown parallel method {self.method!r}; choose one of {', '.join(METHODS)}")

    @property
    def is_parallel(self) -> bool:
        return self.world > 1

    @classmethod
    def from_process_group(cls, method: str = "auto", group: Any = None) -> "ParallelContext":
        """The context of the initialised default (or given) group; world 1 when torch.distributed is not
        initialised, so a single-process caller needs no special case."""
        if not dist.is_available() or not dist.is_initialized():
            return cls(method=method)
        return cls(rank=dist.get_rank(group), world=dist.get_world_size(group), method=method, group=group)

    def method_for(self, num_heads: int) -> str:
        return choose_method(self.method, num_heads, self.world)


def attach_parallel(dit: Any, ctx: ParallelContext) -> Any:
    """Make `dit` (an InfiniteTalkDiT) split its forward over `ctx`'s ranks; world 1 detaches (single path).

    Refused where the split cannot hold: block streaming from host memory (each rank would stream the whole
    model through its GPU while the others wait at every collective; several GPUs have the memory to keep
    the blocks resident) and a Ulysses method whose heads do not divide."""
    if not ctx.is_parallel:
        dit.parallel = None
        return dit
    if getattr(dit, "block_stream", None) is not None:
        raise ValueError(
            "block streaming (gpu.stream_blocks) cannot be combined with sequence parallelism; "
            "set stream_blocks: 0 on multi-GPU tiers"
        )
    ctx.method_for(dit.config.num_heads)  # fails now, not mid-job
    dit.parallel = ctx
    return dit
