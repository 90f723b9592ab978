"""Sequence-parallel scaling: the DiT forward and a whole turbo chunk on 1, 2, 4, 8 GPUs of one machine.

    torchrun --standalone --nproc_per_node 8 bench/parallel_scaling.py --out $OUT/parallel.json

One launch measures every rank count up to the launched one: for n = 1, 2, 4, ... the first n ranks form a
process group and run the engine's sequence-parallel path (`worker.engine.parallel`; n = 1 is the plain
single-GPU path) while the others wait. Printed per n: DiT forward time (480p, 21 latent frames, 32,760
tokens, random bf16 weights), a turbo chunk end to end (81 frames: VAE encode, 4 steps x 2 guidance passes,
banded VAE decode, colour correction), their scaling efficiency t1 / (n * tn), and the chunk's share outside
the DiT. Each n's DiT output is compared with n = 1's (relative max difference).

`--tiny` runs the tiny model on the CPU with gloo instead (tests/bench/test_parallel_scaling.py does, so the
script is known to run; its times mean nothing).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from PIL import Image  # noqa: E402

from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT  # noqa: E402
from worker.engine.sampling.generation import GenerationInputs, GenerationSettings, generate  # noqa: E402
from worker.engine.parallel import ParallelContext, attach_parallel  # noqa: E402
from worker.engine.parallel.vae import ParallelVAE  # noqa: E402
from testkit.tiny import TINY_DIT, TINY_SEED, TINY_VAE, randomise  # noqa: E402
from worker.engine.models.vae import VAEConfig, WanVAE, WanVAEModel  # noqa: E402

TURBO = dict(sample_steps=4, text_guide_scale=1.0, audio_guide_scale=2.0, sample_shift=2.0)


class Shape:
    """Sizes of one run: full (480p, 81 frames) or tiny."""

    def __init__(self, tiny: bool) -> None:
        self.tiny = tiny
        self.cfg = TINY_DIT if tiny else DiTConfig()
        self.vae_cfg = TINY_VAE if tiny else VAEConfig()
        self.height, self.width = (48, 80) if tiny else (480, 832)
        self.frames = 9 if tiny else 81
        self.latent = (16, (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8)
        self.text_tokens = 12 if tiny else 120


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_dit(shape: Shape, device: torch.device, dtype: torch.dtype) -> InfiniteTalkDiT:
    with torch.device("meta"):
        dit = InfiniteTalkDiT(shape.cfg)
    dit = dit.to(dtype).to_empty(device=device)
    dit.init_weights(torch.Generator(device=device).manual_seed(1))
    return dit.eval().requires_grad_(False)


def build_vae(shape: Shape, device: torch.device, dtype: torch.dtype) -> WanVAE:
    model = WanVAEModel.on_meta(shape.vae_cfg)
    state = {k: v.to(dtype) for k, v in randomise(model, TINY_SEED + 4).items()}
    return WanVAE.from_state_dict(state, shape.vae_cfg, device=device, dtype=dtype)


def dit_inputs(shape: Shape, device: torch.device, dtype: torch.dtype, batch: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(5)
    c, t, h, w = shape.latent
    cfg = shape.cfg

    def rand(*size):
        return torch.randn(*size, generator=g).to(device)

    return dict(
        latent=rand(batch, c, t, h, w),
        t=torch.full((batch,), 900.0, device=device),
        context=rand(batch, shape.text_tokens, cfg.text_dim).to(dtype),
        clip_fea=rand(batch, 257, cfg.clip_dim).to(dtype),
        y=rand(batch, 20, t, h, w),
        audio=rand(batch, 1, 4 * (t - 1) + 1, cfg.audio_window, cfg.audio_layers, cfg.audio_dim).to(dtype),
    )


def time_calls(fn, device: torch.device, group: Any, warmup: int, iters: int) -> float:
    """Median wall time of `fn` over the group's ranks (each call starts together, ends at the slowest)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        dist.barrier(group=group)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dist.barrier(group=group)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def turbo_chunk(shape: Shape, dit, vae, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """One clip-mode turbo chunk; returns its wall time and the DiT's share of it."""
    g = torch.Generator().manual_seed(7)
    settings = GenerationSettings(
        **TURBO, seed=42, frame_num=shape.frames, motion_frame=min(9, shape.frames - 4), mode="clip",
        bucket={"%.2f" % (shape.height / shape.width): ([shape.height, shape.width], 1)},
    )
    image = Image.fromarray((torch.rand(shape.height, shape.width, 3, generator=g) * 255).to(torch.uint8).numpy())
    cfg = shape.cfg
    inputs = GenerationInputs(
        cond=image,
        audio=(torch.randn(shape.frames + 19, cfg.audio_layers, cfg.audio_dim, generator=g),),
        context=torch.randn(shape.text_tokens, cfg.text_dim, generator=g).to(device, dtype),
        context_null=torch.randn(shape.text_tokens // 3, cfg.text_dim, generator=g).to(device, dtype),
    )
    clip = torch.randn(1, 257, cfg.clip_dim, generator=g).to(device)
    dit_s = [0.0]

    def pre(_m, _a):
        _sync(device)
        dit_s.append(time.perf_counter())

    def post(_m, _a, _y):
        _sync(device)
        dit_s[0] += time.perf_counter() - dit_s.pop()

    hooks = [dit.register_forward_pre_hook(pre), dit.register_forward_hook(post)]
    try:
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            frames = [c.frames_uint8 for c in generate(dit, vae, lambda _i: clip, inputs, settings)]
        _sync(device)
        wall = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
    return {"chunk_s": wall, "chunk_dit_s": dit_s[0], "frames": int(sum(f.shape[0] for f in frames))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (gloo): checks the script runs")
    ap.add_argument("--counts", default="1,2,4,8", help="rank counts to measure (those <= the launched count)")
    ap.add_argument("--method", default="auto", choices=["auto", "ulysses", "ring"])
    ap.add_argument("--batch", type=int, default=1, help="guidance passes per DiT call in the forward timing")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-chunk", action="store_true", help="time the DiT forward only")
    ap.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (worker/engine/kernels/compile.py)")
    ap.add_argument("--out", default="", help="JSON file for the results (rank 0 writes it)")
    args = ap.parse_args()

    use_cuda = torch.cuda.is_available() and not args.tiny
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = torch.bfloat16 if use_cuda else torch.float32
    shape = Shape(args.tiny)
    counts = [n for n in (int(c) for c in args.counts.split(",")) if n <= world]

    dit = build_dit(shape, device, dtype)
    if args.compile:
        from worker.engine.kernels.compile import compile_dit

        compile_dit(dit)  # each rank count's first (warm-up) forward compiles its shapes
    vae = build_vae(shape, device, dtype)
    inputs = dit_inputs(shape, device, dtype, args.batch)
    results: list[dict[str, Any]] = []
    reference = None
    for n in counts:
        group = dist.new_group(ranks=list(range(n)))  # every rank takes part in creating every group
        if rank < n:
            ctx = ParallelContext(rank=rank, world=n, method=args.method, group=group) if n > 1 else ParallelContext()
            attach_parallel(dit, ctx)
            with torch.inference_mode():
                out = dit(**inputs)
                rec: dict[str, Any] = {"ranks": n, "method": ctx.method_for(shape.cfg.num_heads) if n > 1 else "single"}
                rec["dit_forward_s"] = time_calls(lambda: dit(**inputs), device, group, args.warmup, args.iters)
            if reference is None:
                reference = out.float()
            rec["max_rel_diff_vs_1"] = float((out.float() - reference).abs().max() / reference.abs().max())
            if not args.no_chunk:
                dist.barrier(group=group)
                rec.update(turbo_chunk(shape, dit, ParallelVAE(vae, ctx), device, dtype))
            results.append(rec)
        dist.barrier()
    attach_parallel(dit, ParallelContext())

    if rank == 0:
        base = results[0]
        for rec in results:
            n = rec["ranks"]
            rec["dit_efficiency"] = round(base["dit_forward_s"] / (n * rec["dit_forward_s"]), 4)
            if "chunk_s" in rec:
                rec["chunk_efficiency"] = round(base["chunk_s"] / (n * rec["chunk_s"]), 4)
                rec["outside_dit_share"] = round(1 - rec["chunk_dit_s"] / rec["chunk_s"], 4)
        print(f"{'ranks':>5} {'method':>8} {'forward s':>10} {'eff':>6} {'chunk s':>9} {'eff':>6} {'outside DiT':>11}")
        for rec in results:
            print(f"{rec['ranks']:>5} {rec['method']:>8} {rec['dit_forward_s']:>10.4f} {rec['dit_efficiency']:>6.1%} "
                  f"{rec.get('chunk_s', math.nan):>9.3f} {rec.get('chunk_efficiency', math.nan):>6.1%} "
                  f"{rec.get('outside_dit_share', math.nan):>11.1%}", flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"tiny": args.tiny, "world": world, "results": results}, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
