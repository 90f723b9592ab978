"""Sequence parallelism: one DiT forward spread over the GPUs of a worker (torch.distributed).

Every rank runs the same generation loop on the same inputs (SPMD); inside each DiT forward the latent
tokens are split across ranks and only self-attention and the speaker map exchange data. World size 1
(or no process group) is exactly the single-GPU path: nothing here is called then.
"""
from worker.engine.parallel.context import METHODS, ParallelContext, attach_parallel, choose_method
from worker.engine.parallel.sequence import SequenceShard

__all__ = ["METHODS", "ParallelContext", "SequenceShard", "attach_parallel", "choose_method"]
