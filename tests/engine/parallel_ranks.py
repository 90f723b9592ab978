"""Rank-side half of the sequence-parallel tests: tiny-model scenarios that every rank (and the single
process they are compared with) runs identically, and the spawn helper that starts gloo ranks on CPU.

Not a test module itself: `test_parallel.py` spawns `rank_main` in child processes.
"""
from __future__ import annotations

import os
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from worker.engine.models.dit import InfiniteTalkDiT
from worker.engine.sampling.generation import GenerationInputs, GenerationSettings, generate
from worker.engine.parallel import ParallelContext, attach_parallel
from worker.engine.parallel.vae import ParallelVAE
from testkit.tiny import TINY_DIT, TINY_SEED, TINY_VAE, randomise
from worker.engine.models.vae import WanVAE, WanVAEModel

# Latent grid (3 frames of 6 x 10 latents -> 3 x 15 tokens = 45): 45 tokens split over 2, 3 or 4 ranks
# needs padding and puts chunk edges inside frames, the cases a frame-aligned split would never meet.
LATENT = (16, 3, 6, 10)
BUCKET = {"0.60": ([48, 80], 1)}  # one bucket: an 80 x 48 image renders at 80 x 48 (latent 6 x 10)


def tiny_dit() -> InfiniteTalkDiT:
    model = InfiniteTalkDiT(TINY_DIT)
    model.load_state_dict(randomise(model, TINY_SEED + 1))
    return model.eval().requires_grad_(False)


def tiny_vae() -> WanVAE:
    return WanVAE.from_state_dict(randomise(WanVAEModel.on_meta(TINY_VAE), TINY_SEED + 4), TINY_VAE)


def dit_inputs(speakers: int, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(11 + speakers)
    c, t, h, w = LATENT
    cfg = TINY_DIT
    masks = None
    if speakers == 2:
        masks = torch.zeros(3, h, w)
        masks[0, 1:5, 1:4] = 1
        masks[1, 1:5, 6:9] = 1
        masks[2] = (masks[0] + masks[1] == 0).float()
    return dict(
        latent=torch.randn(batch, c, t, h, w, generator=g),
        t=torch.tensor([900.0, 500.0][:batch]),
        context=torch.randn(batch, 12, cfg.text_dim, generator=g),
        clip_fea=torch.randn(batch, 257, cfg.clip_dim, generator=g),
        y=torch.randn(batch, 20, t, h, w, generator=g),
        audio=torch.randn(batch, speakers, 4 * (t - 1) + 1, cfg.audio_window, cfg.audio_layers, cfg.audio_dim, generator=g),
        ref_target_masks=masks,
    )


def run_dit(ctx: ParallelContext, speakers: int, fp8: bool = False) -> torch.Tensor:
    dit = tiny_dit()
    if fp8:  # fp8 block linears (the fp8 model variant) under the split
        from worker.engine.kernels.fp8_linear import convert_linears

        convert_linears(dit)
    dit = attach_parallel(dit, ctx)
    with torch.no_grad():
        return dit(**dit_inputs(speakers))


def gen_inputs(speakers: int) -> GenerationInputs:
    g = torch.Generator().manual_seed(23)
    image = Image.fromarray((torch.rand(48, 80, 3, generator=g) * 255).to(torch.uint8).numpy())
    audio = tuple(torch.randn(40, TINY_DIT.audio_layers, TINY_DIT.audio_dim, generator=g) for _ in range(speakers))
    return GenerationInputs(
        cond=image,
        audio=audio,
        context=torch.randn(7, TINY_DIT.text_dim, generator=g),
        context_null=torch.randn(5, TINY_DIT.text_dim, generator=g),
    )


def gen_settings(mode: str, features: bool = False) -> GenerationSettings:
    """`features`: APG, guidance reuse and TeaCache on (7 steps, so that TeaCache may skip after its 5
    always-computed steps; a huge threshold makes it skip whenever allowed)."""
    extra = dict(sample_steps=7, use_apg=True, guidance_every=2, use_teacache=True, teacache_thresh=1e9) if features else {}
    return GenerationSettings(
        **{"sample_steps": 2, "seed": 5, "frame_num": 9, "motion_frame": 5, "max_frames": 17, "mode": mode,
           "bucket": BUCKET, **extra}
    )


def run_generation(ctx: ParallelContext, mode: str, speakers: int, split_vae: bool = False,
                   features: bool = False) -> dict:
    """The whole video: float frames [3, n, H, W], uint8 frames and the chunk count. `split_vae`: the VAE
    decode is split across the ranks too (else every rank decodes whole, as one process does)."""
    dit = attach_parallel(tiny_dit(), ctx)
    vae = ParallelVAE(tiny_vae(), ctx) if split_vae else tiny_vae()
    clip = torch.randn(1, 257, TINY_DIT.clip_dim, generator=torch.Generator().manual_seed(3))
    chunks = list(generate(dit, vae, lambda image: clip, gen_inputs(speakers), gen_settings(mode, features)))
    return {
        "frames": torch.cat([c.frames for c in chunks], dim=1),
        "uint8": np.concatenate([c.frames_uint8 for c in chunks]),
        "chunks": len(chunks),
    }


def scenario(ctx: ParallelContext, name: str):
    """`dit.<speakers>[.fp8]`, `gen.<mode>.<speakers>[.vae][.features]`, `vae.<latent rows>` (decode) or
    `enc.<latent rows>` (encode); the context's method applies."""
    parts = name.split(".")
    if parts[0] == "dit":
        return run_dit(ctx, int(parts[1]), fp8="fp8" in parts[2:])
    if parts[0] == "gen":
        return run_generation(ctx, parts[1], int(parts[2]), split_vae="vae" in parts[3:],
                              features="features" in parts[3:])
    if parts[0] == "vae":
        return run_vae_decode(ctx, int(parts[1]))
    if parts[0] == "enc":
        return run_vae_encode(ctx, int(parts[1]))
    raise ValueError(f"unknown scenario {name!r}")


def rank_main(rank: int, world: int, store: str, out_dir: str, jobs: list[tuple[str, str]]) -> None:
    """One gloo rank: run every (method, scenario) job and save what this rank ended up with."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        for method, name in jobs:
            results[(method, name)] = scenario(ParallelContext.from_process_group(method), name)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


def spawn_ranks(world: int, tmp: Path, jobs: list[tuple[str, str]]) -> list[dict]:
    """Run `jobs` on `world` gloo ranks (CPU processes); returns each rank's results."""
    tmp.mkdir(parents=True, exist_ok=True)
    store = tmp / "store"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(rank_main, args=(world, str(store), str(tmp), jobs), nprocs=world, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def run_vae_decode(ctx: ParallelContext, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rows)
    latent = torch.randn(1, 16, 3, rows, 5, generator=g)
    return ParallelVAE(tiny_vae(), ctx).decode(latent)


def run_vae_encode(ctx: ParallelContext, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rows)
    video = torch.rand(1, 3, 9, 8 * rows, 40, generator=g) * 2 - 1
    return ParallelVAE(tiny_vae(), ctx).encode(video)
