"""Full-size InfiniteTalk DiT forward on one GPU: time, peak memory, kernel-class profile, and variants.

Random bf16 weights (built on meta, `to_empty` on the GPU, `init_weights` with a CUDA generator), realistic
480p inputs: latent [1,16,21,60,104] (32,760 tokens), 100 text tokens, clip_fea [1,257,1280],
y [1,20,21,60,104], audio [1,S,81,5,12,768] for S = 1 or 2 speakers.

    PYTHONUNBUFFERED=1 python bench/dit_forward.py --out $OUT/dit.json

Variants are experiments, applied around the engine for one measurement and then removed: the SDPA
backend forced through `torch.nn.attention.sdpa_kernel`, the 3D RoPE rotated in float32, and the audio
adapter bypassed (to compare with the public diffusers Wan DiT, which has none). Each variant's output
is compared with the default output on the same inputs (relative L2 difference).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time
from typing import Any, Callable

from common import GIB, cuda_time, log, machine_info, write_json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import worker.engine.models.dit_blocks as dit_blocks
from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


# ---------------------------------------------------------------- experiment patches


def _rope_fp32(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Same rotation as the engine's, in complex64 (float32) instead of complex128."""
    b, l, n, c = x.shape
    f32 = _rope_fp32.cache.get(id(freqs))
    if f32 is None:
        f32 = _rope_fp32.cache[id(freqs)] = freqs.to(torch.complex64)
    xc = torch.view_as_complex(x.float().reshape(b, l, n, c // 2, 2))
    return torch.view_as_real(xc * f32).reshape(b, l, n, c).to(x.dtype)


_rope_fp32.cache = {}


@contextlib.contextmanager
def patched_rope():
    original = dit_blocks.apply_rope_3d
    dit_blocks.apply_rope_3d = _rope_fp32
    try:
        yield
    finally:
        dit_blocks.apply_rope_3d = original


@contextlib.contextmanager
def no_adapter(model: InfiniteTalkDiT):
    """Skip the audio cross-attention and its norm: the block then computes the plain Wan2.1 I2V block."""
    saved = [(blk.audio_cross_attn.forward, blk.norm_x.forward) for blk in model.blocks]
    for blk in model.blocks:
        blk.audio_cross_attn.forward = lambda x, *a, **k: x.new_zeros(())
        blk.norm_x.forward = lambda x: x
    try:
        yield
    finally:
        for blk, (fa, fn) in zip(model.blocks, saved):
            blk.audio_cross_attn.forward = fa
            blk.norm_x.forward = fn


def variant_context(name: str, model: InfiniteTalkDiT) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for part in name.split("+"):
        if part == "default":
            continue
        if part in BACKENDS:
            stack.enter_context(sdpa_kernel([BACKENDS[part]]))
        elif part == "cudnn_first":
            stack.enter_context(
                sdpa_kernel(
                    [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
                    set_priority=True,
                )
            )
        elif part == "rope32":
            stack.enter_context(patched_rope())
        elif part == "noadapter":
            stack.enter_context(no_adapter(model))
        else:
            raise ValueError(f"unknown variant part {part!r}")
    return stack


# ---------------------------------------------------------------- inputs and model


def make_inputs(speakers: int, args, gen: torch.Generator) -> dict[str, Any]:
    dev = "cuda"
    t_lat = (args.frames - 1) // 4 + 1
    h, w = args.height // 8, args.width // 8

    def randn(*shape):
        return torch.randn(shape, generator=gen, device=dev, dtype=torch.float32)

    inputs = dict(
        latent=randn(1, 16, t_lat, h, w),
        t=torch.tensor([500.0], device=dev),
        context=randn(1, args.text_tokens, 4096),
        clip_fea=randn(1, 257, 1280),
        y=randn(1, 20, t_lat, h, w),
        audio=randn(1, speakers, args.frames, 5, 12, 768),
    )
    if speakers == 2:
        masks = torch.zeros(3, h, w, device=dev)
        masks[0, :, : w // 3] = 1
        masks[1, :, 2 * w // 3 :] = 1
        masks[2] = 1 - masks[0] - masks[1]
        inputs["ref_target_masks"] = masks
    return inputs


def build_model(seed: int) -> tuple[InfiniteTalkDiT, dict[str, Any]]:
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = InfiniteTalkDiT(DiTConfig.full_size())
    model = model.to(torch.bfloat16).to_empty(device="cuda")
    model.init_weights(torch.Generator(device="cuda").manual_seed(seed))
    model.eval().requires_grad_(False)
    torch.cuda.synchronize()
    n_params = sum(p.numel() for p in model.parameters())
    n_adapter = sum(
        p.numel() for k, p in model.named_parameters() if k.startswith("audio_proj.") or ".audio_cross_attn." in k or ".norm_x." in k
    )
    return model, {
        "params": n_params,
        "adapter_params": n_adapter,
        "weights_gib": round(n_params * 2 / GIB, 2),
        "build_s": round(time.perf_counter() - t0, 2),
        "memory_allocated_gib": round(torch.cuda.memory_allocated() / GIB, 2),
    }


def flop_estimate(cfg: DiTConfig, tokens: int, text_tokens: int, frames: int, adapter: bool) -> float:
    """Matmul + attention FLOPs of one forward (2 per multiply-add); the small embeddings are left out."""
    d, f, l = cfg.dim, cfg.ffn_dim, tokens
    ctx_txt, ctx_img = cfg.text_len, 257
    per_block = (
        2 * l * d * d * 4  # self q, k, v, o
        + 4 * l * l * d  # self attention scores + weighted sum
        + 2 * l * d * d * 2  # cross q, o
        + 2 * (ctx_txt + ctx_img) * d * d * 2  # cross k, v (+ img)
        + 4 * l * (ctx_txt + ctx_img) * d  # cross attention
        + 2 * l * d * f * 2  # ffn
    )
    if adapter:
        a = 32 * frames
        per_block += 2 * l * d * d * 2 + 2 * a * cfg.output_dim * 2 * d + 4 * l * 32 * d
    return per_block * cfg.num_layers


# ---------------------------------------------------------------- profiler


def classify(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "attention", "sdpa", "attn")):
        return "attention"
    if any(s in n for s in ("gemm", "xmma", "cutlass", "nvjet", "cublas", "matmul", "wgmma")):
        return "matmul"
    if "conv" in n:
        return "conv"
    if "memcpy" in n or "memset" in n:
        return "memcpy/memset"
    return "elementwise/other"


def profile_once(fn: Callable[[], Any], top: int = 25) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None)
        if us is None:
            us = getattr(ev, "cuda_time_total", 0)
        if us <= 0:
            continue
        rows.append((ev.key, us / 1e6, ev.count))
    rows.sort(key=lambda r: -r[1])
    classes: dict[str, float] = {}
    for name, s, _ in rows:
        classes[classify(name)] = classes.get(classify(name), 0.0) + s
    return {
        "gpu_time_s": round(sum(r[1] for r in rows), 4),
        "by_class_s": {k: round(v, 4) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": n[:160], "class": classify(n), "s": round(s, 4), "count": c} for n, s, c in rows[:top]
        ],
    }


# ---------------------------------------------------------------- attention micro-benchmark


def attention_bench(args) -> dict[str, Any]:
    """The three attention shapes of one block, per SDPA backend, with accuracy against a float32 reference."""
    import torch.nn.functional as F

    gen = torch.Generator(device="cuda").manual_seed(7)
    t_lat = (args.frames - 1) // 4 + 1
    l = t_lat * (args.height // 16) * (args.width // 16)
    shapes = {
        "self": (1, l, l),
        "cross_text": (1, l, 512),
        "cross_img": (1, l, 257),
        "audio": (t_lat, l // t_lat, 32),
    }
    out: dict[str, Any] = {}
    for label, (b, lq, lk) in shapes.items():
        q = torch.randn(b, 40, lq, 128, generator=gen, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, 40, lk, 128, generator=gen, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, 40, lk, 128, generator=gen, device="cuda", dtype=torch.bfloat16)
        # Reference for the first 256 queries, float32 math.
        qs = q[:, :, :256].float()
        ref = torch.softmax(qs @ k.float().transpose(-1, -2) / math.sqrt(128), dim=-1) @ v.float()
        flops = 4 * b * 40 * lq * lk * 128
        res = {}
        for name, be in BACKENDS.items():
            try:
                with sdpa_kernel([be]):
                    o = F.scaled_dot_product_attention(q, k, v)
                    err = ((o[:, :, :256].float() - ref).norm() / ref.norm()).item()
                    tm = cuda_time(lambda: F.scaled_dot_product_attention(q, k, v), 1, 3 if label == "self" else 10)
                res[name] = {"median_s": tm["median_s"], "tflops": round(flops / tm["median_s"] / 1e12, 1), "rel_err": err}
            except RuntimeError as exc:
                res[name] = {"error": str(exc).splitlines()[0][:200]}
        out[label] = {"q": [b, 40, lq, 128], "k": [b, 40, lk, 128], **res}
        log("attention", label, {k2: v2.get("median_s", v2.get("error")) for k2, v2 in res.items()})
        del q, k, v, ref
    torch.cuda.empty_cache()
    return out


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    tm = cuda_time(lambda: a @ b, 3, 10)
    return round(2 * 8192**3 / tm["median_s"] / 1e12, 1)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--text-tokens", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--variant-iters", type=int, default=3)
    ap.add_argument(
        "--variants",
        default="flash,cudnn,efficient,rope32,cudnn+rope32,noadapter,noadapter+flash,noadapter+cudnn+rope32",
        help="comma-separated; parts joined by '+': flash|cudnn|efficient|cudnn_first|rope32|noadapter ('' for none)",
    )
    ap.add_argument("--two-speaker-variants", default="", help="extra variants also timed with two speakers")
    ap.add_argument("--no-attention-bench", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-variant", default="", help="also profile this variant")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    result: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    save = lambda: write_json(args.out, result)  # noqa: E731
    log("machine", result["machine"])
    result["matmul_bf16_tflops"] = matmul_rate()
    log("matmul bf16 TFLOP/s", result["matmul_bf16_tflops"])

    if not args.no_attention_bench:
        result["attention"] = attention_bench(args)
        save()

    model, info = build_model(seed=0)
    result["model"] = info
    log("model", info)
    cfg = model.config
    t_lat = (args.frames - 1) // 4 + 1
    tokens = t_lat * (args.height // 16) * (args.width // 16)
    result["tokens"] = tokens
    result["tflop_with_adapter"] = round(flop_estimate(cfg, tokens, args.text_tokens, t_lat, True) / 1e12, 1)
    result["tflop_without_adapter"] = round(flop_estimate(cfg, tokens, args.text_tokens, t_lat, False) / 1e12, 1)

    gen = torch.Generator(device="cuda").manual_seed(1)
    inputs = {1: make_inputs(1, args, gen), 2: make_inputs(2, args, gen)}
    reference: dict[int, torch.Tensor] = {}

    def run(speakers: int, variant: str, warmup: int, iters: int) -> dict[str, Any]:
        fwd = lambda: model(**inputs[speakers])  # noqa: E731
        with torch.inference_mode(), variant_context(variant, model):
            torch.cuda.reset_peak_memory_stats()
            try:
                out = fwd()
            except RuntimeError as exc:
                return {"error": str(exc).splitlines()[0][:300]}
            tm = cuda_time(fwd, max(warmup - 1, 0), iters)
        rec = {
            **tm,
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
            "finite": bool(torch.isfinite(out).all()),
            "out_rms": float(out.float().pow(2).mean().sqrt()),
        }
        if variant == "default" and speakers not in reference:
            reference[speakers] = out
        elif speakers in reference:
            ref = reference[speakers]
            rec["rel_diff_vs_default"] = float((out - ref).norm() / ref.norm())
        return rec

    result["forward"] = {}
    for speakers in (1, 2):
        key = f"{speakers}spk/default"
        rec = run(speakers, "default", args.warmup, args.iters)
        result["forward"][key] = rec
        log(key, rec)
        save()
    # Run-to-run determinism of the default path (same inputs).
    result["forward"]["1spk/default(rerun)"] = run(1, "default", 1, 2)
    save()

    for variant in [v for v in args.variants.split(",") if v]:
        key = f"1spk/{variant}"
        rec = run(1, variant, 1, args.variant_iters)
        result["forward"][key] = rec
        log(key, rec)
        save()
    for variant in [v for v in args.two_speaker_variants.split(",") if v]:
        key = f"2spk/{variant}"
        rec = run(2, variant, 1, args.variant_iters)
        result["forward"][key] = rec
        log(key, rec)
        save()

    if not args.no_profile:
        result["profile"] = {}
        for variant in ["default"] + ([args.profile_variant] if args.profile_variant else []):
            with torch.inference_mode(), variant_context(variant, model):
                result["profile"][variant] = profile_once(lambda: model(**inputs[1]))
            log("profile", variant, result["profile"][variant]["by_class_s"])
            save()

    # Short table last (the device reply carries the end of the output).
    print("\n%-36s %9s %9s %10s %12s" % ("forward (480x832x81)", "median_s", "min_s", "peak_GiB", "rel_diff"))
    for key, rec in result["forward"].items():
        if "error" in rec:
            print("%-36s ERROR %s" % (key, rec["error"][:80]))
            continue
        print(
            "%-36s %9.3f %9.3f %10.2f %12s"
            % (key, rec["median_s"], rec["min_s"], rec["peak_memory_gib"], "%.2e" % rec.get("rel_diff_vs_default", 0.0))
        )
    print("TFLOP per forward: %.0f with adapter, %.0f without" % (result["tflop_with_adapter"], result["tflop_without_adapter"]))
    save()


if __name__ == "__main__":
    main()
