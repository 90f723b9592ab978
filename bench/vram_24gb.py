"""Peak VRAM of one 480x832 turbo chunk with the 24 GB tier's placement (conf/gpu/rtx4090_24.yaml).

    python bench/vram_24gb.py --out $OUT/vram.json [--stream-blocks N] [--batch-passes] [--quant fp8]

Why: bench/README.md section 5 measured 24.5 GiB allocated / 39.6 GiB reserved with 24 streamed blocks and
batched guidance passes, which does not fit a 24 GB card. This script takes the tier's settings from the
composed config (the same `engine_options` the worker uses: streamed blocks, unbatched passes, VAE offload,
PYTORCH_CUDA_ALLOC_CONF set before torch starts), builds the full-size DiT with random weights block by block
(so the card never holds more than the resident part plus one block), and runs one chunk through the
engine's own loop (`worker.engine.sampling.generation.generate`). With `--cap-gib` (default 23.5, what a 4090 leaves
to PyTorch after the CUDA context) the process is capped by `torch.cuda.set_per_process_memory_fraction`,
so an H100/H200 answers whether the chunk fits a 24 GB card instead of only reporting the peak.

Not covered: umT5, CLIP and wav2vec2 (offloaded or CPU-side in this tier, so they hold no VRAM during the
chunk; their per-job load into VRAM is a few GiB at most and happens before the DiT runs), and a real
RTX 4090 (PCIe bandwidth and compute differ; peaks do not).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from configuration import compose_config  # noqa: E402  (no torch import)
from contract.choices import SAMPLER_PRESETS  # noqa: E402
from worker.wiring import engine_options, process_env  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpu", default="rtx4090_24", help="GPU tier (conf/gpu/<name>.yaml) whose settings are used")
    ap.add_argument("--stream-blocks", type=int, default=None, help="override the tier's stream_blocks")
    ap.add_argument("--batch-passes", action="store_true", help="batch guidance passes (the tier says unbatched)")
    ap.add_argument("--quant", choices=("none", "fp8"), default="none", help="fp8: block Linears as FP8Linear")
    ap.add_argument("--preset", default="turbo", choices=SAMPLER_PRESETS)
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps (peak does not depend on it)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--cap-gib", type=float, default=23.5, help="cap the process at this much VRAM (0: no cap)")
    args = ap.parse_args()

    cfg = compose_config([f"gpu={args.gpu}"])
    opts = engine_options(cfg)
    env = process_env(cfg)
    for key, value in env.items():  # before torch is imported: the CUDA allocator reads it once
        os.environ.setdefault(key, value)
    stream_blocks = opts["stream_blocks"] if args.stream_blocks is None else args.stream_blocks
    batch_passes = args.batch_passes or opts["batch_passes"]

    from bench.common import GIB, host_memory, log, machine_info, write_json
    import torch

    res: dict[str, Any] = {
        "machine": machine_info(),
        "args": vars(args),
        "tier": {
            "name": cfg.gpu.name,
            "stream_blocks": stream_blocks,
            "batch_passes": batch_passes,
            "offload_vae": opts["offload_vae"],
            "offload_clip": opts["offload_clip"],
            "offload_t5": opts["offload_t5"],
            "quant": args.quant,
            "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        },
    }
    save = lambda: write_json(args.out, res)  # noqa: E731
    log(res["machine"], res["tier"])
    if args.cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))
        res["cap_gib"] = args.cap_gib
    try:
        dit, res["dit"] = build_streamed_dit(stream_blocks, args.quant)
        log("dit", res["dit"])
        from worker.engine.kernels.attention import set_attention_backend
        from worker.engine.kernels.offload import OffloadedVAE

        from bench.gen_chunk import build_vae

        set_attention_backend(opts["attention"])
        vae = build_vae(seed=2)
        if opts["offload_vae"]:
            vae = OffloadedVAE(vae, "cuda")
        torch.cuda.empty_cache()
        res["resident_gib"] = round(torch.cuda.memory_allocated() / GIB, 2)
        res["host"] = host_memory()
        log("resident", res["resident_gib"], res["host"])
        save()
        res["chunk"] = run_chunk(dit, vae, args, batch_passes)
        res["fits"] = bool(not args.cap_gib or res["chunk"]["peak_reserved_gib"] <= args.cap_gib)
        log("chunk", res["chunk"])
    except torch.OutOfMemoryError as exc:
        res["fits"] = False
        res["oom"] = str(exc).splitlines()[0]
        res["peak_allocated_gib_at_oom"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        res["peak_reserved_gib_at_oom"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
        log("OOM", res["oom"])
    except Exception as exc:  # noqa: BLE001 - keep what was measured
        res["error"] = f"{type(exc).__name__}: {exc}"
        res["traceback"] = traceback.format_exc()
        log("error", res["error"])
    save()


def build_streamed_dit(stream_blocks: int, quant: str):
    """Full-size DiT, bf16, random weights, drawn one block at a time on the GPU; the last
    `stream_blocks` blocks go to host memory and are streamed (`BlockStreamer`), as the engine places them."""
    import torch
    from torch import nn

    from bench.common import GIB
    from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT
    from worker.engine.kernels.fp8_linear import convert_linears
    from worker.engine.kernels.offload import HOST, BlockStreamer

    t0 = time.perf_counter()
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.device("meta"):
        dit = InfiniteTalkDiT(DiTConfig.full_size())
    dit = dit.to(torch.bfloat16)
    blocks, dit.blocks = dit.blocks, nn.ModuleList()
    dit.to_empty(device="cuda")
    InfiniteTalkDiT.init_weights(dit, gen)  # only iterates named_parameters: works on any module
    dit.blocks = blocks
    first_streamed = len(blocks) - min(max(stream_blocks, 0), len(blocks))
    block_bytes = 0
    for i, block in enumerate(blocks):
        block.to_empty(device="cuda")
        InfiniteTalkDiT.init_weights(block, gen)
        if quant == "fp8":
            convert_linears(block, include=lambda _name: True)
        block_bytes = max(block_bytes, sum(t.numel() * t.element_size() for t in block.state_dict().values()))
        if i >= first_streamed:
            block.to(HOST)
    dit.eval().requires_grad_(False)
    streamer = BlockStreamer.attach(dit, stream_blocks, "cuda")
    torch.cuda.synchronize()
    return dit, {
        "blocks": len(blocks),
        "streamed": len(streamer.streamed),
        "block_gib": round(block_bytes / GIB, 3),
        "build_s": round(time.perf_counter() - t0, 1),
        "allocated_after_build_gib": round(torch.cuda.memory_allocated() / GIB, 2),
    }


def run_chunk(dit, vae, args, batch_passes: bool) -> dict[str, Any]:
    """One 81-frame clip-mode chunk, one speaker, the preset's sampling settings; peaks by phase."""
    import numpy as np
    import torch
    from PIL import Image

    from bench.common import GIB
    from bench.gen_chunk import PRESETS
    from worker.engine.sampling.generation import GenerationInputs, GenerationSettings, generate

    p = dict(PRESETS[args.preset])
    if args.steps is not None:
        p["sample_steps"] = args.steps
    h, w = args.height, args.width
    settings = GenerationSettings(
        **p, seed=42, frame_num=81, motion_frame=9, mode="clip", color_correction_strength=1.0,
        bucket={"%.2f" % (h / w): ([h, w], 1)}, batch_passes=batch_passes,
    )
    gen = torch.Generator().manual_seed(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    audio = torch.randn(100, 12, 768, generator=gen)
    context = torch.randn(120, 4096, generator=gen).to("cuda", torch.bfloat16)
    context_null = torch.randn(40, 4096, generator=gen).to("cuda", torch.bfloat16)
    clip_fea = torch.randn(1, 257, 1280, generator=gen).to("cuda")
    inputs = GenerationInputs(cond=image, audio=(audio,), context=context, context_null=context_null)

    calls: list[dict[str, Any]] = []

    def after_forward(_module, args_, _out):
        calls.append({"batch": int(args_[0].shape[0]),
                      "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)})

    hook = dit.register_forward_hook(after_forward)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            chunks = list(generate(dit, vae, lambda _img: clip_fea, inputs, settings))
        torch.cuda.synchronize()
    finally:
        hook.remove()
    return {
        "preset": args.preset,
        "steps": p["sample_steps"],
        "size": [h, w],
        "passes_per_step": len(settings.guidance.branches),
        "dit_calls": len(calls),
        "dit_batch": sorted({c["batch"] for c in calls}),
        # peak over VAE encode + all DiT calls (the decode comes after the last call)
        "peak_allocated_through_dit_gib": calls[-1]["peak_allocated_gib"] if calls else None,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
        "chunk_s": round(time.perf_counter() - t0, 2),
        "frames_out": list(chunks[0].frames_uint8.shape),
    }


if __name__ == "__main__":
    main()
