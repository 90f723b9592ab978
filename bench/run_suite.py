"""The GPU benchmark suite (issue #8): one command, one table of (figure, floor, ratio).

    PYTHONUNBUFFERED=1 python3 bench/run_suite.py --out $OUT/suite.json

Parts (`--parts`, in this order; the model is compiled in place by `compile`, so later parts run compiled):
  matmul   bf16 matmul rate: 8192^3 and the DiT's FFN shape (32760 x 5120 x 13824); the larger is the floor's rate
  dit      full-size DiT forward, 480x832x81, bf16, one speaker, eager
  qkv      the same with the self-attention q/k/v projections fused into one matmul (bench-only experiment)
  compile  `worker.engine.kernels.compile.compile_dit` (regional: each block), compile time and the compiled forward
  turbo    one 480p chunk end to end with the turbo preset (4 steps x 2 passes batched), after a 1-step warm-up chunk
  quality  the quality preset's chunk (40 steps x 3 passes) estimated from a measured batch-3 forward: see below
  fast     one 480p chunk end to end with the fast preset (8 steps x 2 passes)
  lightning  one 480p chunk end to end with the lightning preset (4 steps x 1 pass: guidance off)
  turbo_reuse  the turbo chunk with `guidance_every=2` (`--reuse-every`; guidance passes on steps 0 and 2, the
           correction reused on steps 1 and 3: 6 pass-equivalents instead of 8; 4: 5); the warm-up chunk compiles
           both batch shapes
  recompile  drop the compiled blocks and compile again with `--recompile-mode` (e.g. reduce-overhead: CUDA
           graphs), then time the forward as `compile` does (bench-only; the engine compiles once)
  attn     the self-attention alone ([1, 32760, 40, 128] bf16) through every attention backend importable here:
           time, TFLOP/s and relative error against a float32 reference on 4 heads
  backend:NAME  switch the engine's attention backend (`worker.engine.kernels.attention`) to NAME for the parts after it
           and time the forward (compiled if `compile` ran), with its difference to the forward before the switch
  fp8      convert the block Linears to fp8 (`worker.engine.formats.fp8.convert_linears`: e4m3 weights, per-row scales,
           `torch._scaled_mm` with per-row activation scales) and time the forward; the relative error of the
           output against the bf16 forward just before (same attention backend, same inputs) is the fp8 accuracy
  accum:fast|slow  fp8 GEMM accumulation (`kernels.fp8_linear.FAST_ACCUM`) for the parts after it, and the forward
           timed with it; its difference to the forward before is the cost in accuracy of fast accumulation
  vae      the VAE decode of one chunk's latent with `torch.backends.cudnn.benchmark` off and on
  cudatests  the CUDA-only tests: fp8 attention kernel, fp8 GEMM (fast accumulation), quantising on the card (pytest)

Chunk parts keep their last chunk's frames; every turbo-family chunk after the first is compared with the
first (same seeds and inputs, so only the arithmetic differs: bf16 -> fp8, SDPA -> FA3, guidance reuse):
relative L2 of the uint8 frames and PSNR, under `frames_vs_first_turbo`.

Floors are arithmetic: DiT FLOPs (matmul + attention, `dit_forward.flop_estimate`) over the measured matmul rate;
the chunk floors count the DiT forwards only (VAE, colour and the rest have no floor here).
"""
from __future__ import annotations

import argparse
import time
import traceback
from types import SimpleNamespace
from typing import Any

from common import GIB, cuda_time, log, machine_info, write_json
from dit_forward import build_model, flop_estimate, make_inputs, profile_once

import torch
import torch.nn.functional as F

from gen_chunk import SECONDS_PER_CHUNK, build_vae, run_chunk
from worker.engine.models import dit_blocks
from worker.engine.kernels.attention import attention
from worker.engine.kernels.compile import compile_dit
from worker.engine.models.rope import apply_rope_3d

PARTS = ("matmul", "dit", "qkv", "compile", "profile", "turbo", "quality", "fast", "recompile", "offload", "quality_full",
         "attn", "backend", "fp8", "vae", "turbo_reuse", "lightning", "cudatests", "accum")
ATTN_SHAPE = (1, 32760, 40, 128)  # the 480x832x81 self-attention: batch, tokens, heads, head dim


def attention_kernels() -> dict[str, Any]:
    """Every importable backend on the self-attention shape; error against float32 on the first 4 heads."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from worker.engine.kernels.attention import BACKENDS, attention, backend_available, flash_module_name

    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = (torch.randn(ATTN_SHAPE, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):  # float32, memory-efficient: the reference
        ref = F.scaled_dot_product_attention(*(t[:, :, :4].float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    flop = 4 * ATTN_SHAPE[0] * ATTN_SHAPE[1] ** 2 * ATTN_SHAPE[2] * ATTN_SHAPE[3]
    out: dict[str, Any] = {"flash_module": flash_module_name()}
    for name in BACKENDS:
        if name == "fp8_reference":  # float32 emulation with O(L^2) memory: not for this shape
            continue
        if not backend_available(name):
            out[name] = "not installed"
            continue
        try:
            with torch.inference_mode():
                got = attention(q, k, v, backend=name)
                tm = cuda_time(lambda: attention(q, k, v, backend=name), 2, 5)
            err = float((got[:, :, :4].float() - ref).norm() / ref.norm())
            out[name] = {**tm, "tflops": round(flop / tm["median_s"] / 1e12, 1), "rel_err_vs_fp32": err}
            if name == "fa3_fp8":  # the quantisation's own cost, eager (unfused); in a compiled block it fuses
                from worker.engine.kernels.fp8_attention import quantize

                with torch.inference_mode():
                    out[name]["quantize_eager"] = cuda_time(lambda: quantize(q, k, v), 2, 5)
        except Exception as exc:  # noqa: BLE001 - an unusable kernel is a result, not a crash
            out[name] = "error: " + traceback.format_exc()[-1500:]
        log("attn", name, out[name] if isinstance(out[name], str) else {k: out[name][k] for k in ("median_s", "tflops", "rel_err_vs_fp32")})
    return out


def matmul_rates() -> dict[str, float]:
    out = {}
    for label, (m, k, n) in {"8192^3": (8192, 8192, 8192), "ffn_32760x5120x13824": (32760, 5120, 13824)}.items():
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        tm = cuda_time(lambda: a @ b, 3, 10)
        out[label] = round(2 * m * k * n / tm["median_s"] / 1e12, 1)
        del a, b
    return out


def fp8_matmul_rate() -> float:
    """`torch._scaled_mm` e4m3 x e4m3 -> bf16 with row-wise scales on the FFN shape (the fp8 floor's rate)."""
    m, k, n = 32760, 5120, 13824
    a = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
    sa = torch.ones(m, 1, device="cuda")
    sb = torch.ones(1, n, device="cuda")
    tm = cuda_time(lambda: torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), 3, 10)
    return round(2 * m * k * n / tm["median_s"] / 1e12, 1)


class fused_qkv:
    """Bench-only: q/k/v weights concatenated into one [3C, C] matrix per block, one matmul instead of three."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self):
        for blk in self.model.blocks:
            sa = blk.self_attn
            sa._w_qkv = torch.cat([sa.q.weight, sa.k.weight, sa.v.weight])
            sa._b_qkv = torch.cat([sa.q.bias, sa.k.bias, sa.v.bias])

        def forward(sa, x, rope_freqs, frame_tokens, token_masks=None):
            b, l, _ = x.shape
            n, d = sa.num_heads, sa.head_dim
            q, k, v = F.linear(x, sa._w_qkv, sa._b_qkv).split(sa.dim, dim=-1)
            q = apply_rope_3d(sa.norm_q(q).view(b, l, n, d), rope_freqs)
            k = apply_rope_3d(sa.norm_k(k).view(b, l, n, d), rope_freqs)
            return sa.o(attention(q, k, v.view(b, l, n, d)).flatten(2)), None

        self.saved = dit_blocks.SelfAttention.forward
        dit_blocks.SelfAttention.forward = forward
        return self

    def __exit__(self, *exc):
        dit_blocks.SelfAttention.forward = self.saved
        for blk in self.model.blocks:
            del blk.self_attn._w_qkv, blk.self_attn._b_qkv
        torch.cuda.empty_cache()


def compare_frames(got, ref) -> dict[str, float]:
    """uint8 videos of the same shape: relative L2 (of the pixel values) and PSNR in dB."""
    import numpy as np

    a, b = got.astype(np.float64), ref.astype(np.float64)
    mse = float(((a - b) ** 2).mean())
    return {"rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
            "psnr_db": float("inf") if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2),
            "max_abs": float(np.abs(a - b).max())}


def best_backend(kernels: dict[str, Any]) -> str:
    """The fastest attention backend whose error is within 1.5x of SDPA's (i.e. bf16-exact kernels only;
    8-bit kernels such as SageAttention are timed by naming them explicitly)."""
    timed = {n: r for n, r in kernels.items() if isinstance(r, dict) and "median_s" in r}
    if "sdpa" not in timed:
        return "sdpa"
    limit = 1.5 * timed["sdpa"]["rel_err_vs_fp32"]
    ok = {n: r for n, r in timed.items() if r["rel_err_vs_fp32"] <= limit}
    return min(ok, key=lambda n: ok[n]["median_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="matmul,dit,compile,turbo,quality,fast")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    ap.add_argument("--recompile-mode", default="reduce-overhead", help="torch.compile mode of the recompile part")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--reuse-every", type=int, default=2, help="turbo_reuse: guidance passes on every k-th step")
    ap.add_argument("--chunks", type=int, default=1, help="turbo/fast: chunks per job (2+: streaming, figures of the last)")
    ap.add_argument("--stream-blocks", type=int, default=24, help="offload part: DiT blocks streamed from host (rtx4090_24: 24)")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="skip parts that would start after this")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p.split(":")[0] not in PARTS:
            raise SystemExit(f"unknown part {p!r}; known: {PARTS}")

    t_start = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    # every (attention backend, linear kind, batch) is one more compiled variant of the block: room for all
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    res: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    save = lambda: write_json(args.out, res)  # noqa: E731
    log(res["machine"])

    shape = SimpleNamespace(frames=81, height=480, width=832, text_tokens=100)
    model, res["model"] = build_model(seed=0)
    log("model", res["model"])
    cfg = model.config
    tokens = 21 * 30 * 52
    flops = flop_estimate(cfg, tokens, 100, 21, adapter=True)
    res["tflop_per_forward"] = round(flops / 1e12, 1)
    gen = torch.Generator(device="cuda").manual_seed(1)
    inputs = make_inputs(1, shape, gen)
    ref_out = None
    last_out = None  # output of the latest timed forward: what the next variant is compared with
    vae = None
    first_turbo_frames = None
    from worker.engine.kernels.attention import resolve_backend

    res["auto_resolves_to"] = {"bf16": resolve_backend("auto", "cuda"), "fp8": resolve_backend("auto", "cuda", fp8=True)}
    log("attention auto resolves to", res["auto_resolves_to"])

    def forward_time(label: str, iters: int) -> dict[str, Any]:
        nonlocal ref_out, last_out
        with torch.inference_mode():
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(**inputs)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            tm = cuda_time(lambda: model(**inputs), 0, iters)
        rec = {**tm, "first_call_s": round(first, 2), "peak_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)}
        rec["finite"] = bool(torch.isfinite(out).all())
        if ref_out is None:
            ref_out = out
        else:
            rec["rel_diff_vs_eager"] = float((out - ref_out).norm() / ref_out.norm())
        if last_out is not None:
            rec["rel_diff_vs_previous"] = float((out.float() - last_out.float()).norm() / last_out.float().norm())
        last_out = out
        log(label, rec)
        return rec

    for part in parts:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.deadline_s:
            res.setdefault("skipped", []).append(part)
            log("skip", part, "(deadline)")
            continue
        try:
            if part == "matmul":
                res["matmul_tflops"] = matmul_rates()
                log("matmul", res["matmul_tflops"])
                try:
                    res["fp8_matmul_tflops"] = fp8_matmul_rate()
                    log("fp8 matmul (rowwise scaled_mm)", res["fp8_matmul_tflops"])
                except Exception as exc:  # noqa: BLE001
                    res.setdefault("errors", {})["fp8_matmul"] = repr(exc)[:500]
            elif part == "dit":
                res["dit_eager"] = forward_time("dit eager", args.iters)
            elif part == "attn":
                res["attention_kernels"] = attention_kernels()
            elif part.startswith("backend:"):
                from worker.engine.kernels.attention import set_attention_backend

                name = part.split(":", 1)[1]
                if name == "best":
                    name = best_backend(res.get("attention_kernels", {}))
                    log("best attention backend", name)
                set_attention_backend(name)
                key, n = f"dit_{name}", 2
                while key in res:  # the same backend again after a change (fp8 linears): keep both
                    key, n = f"dit_{name}_{n}", n + 1
                res[key] = forward_time(f"dit attention={name}", args.iters)
            elif part == "fp8":
                from worker.engine.kernels.fp8_linear import convert_linears

                t0 = time.perf_counter()
                with torch.no_grad():
                    names = convert_linears(model)
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                rec = res["dit_fp8"] = forward_time("dit fp8 linears", args.iters)
                rec["convert_s"] = round(time.perf_counter() - t0, 2)
                rec["fp8_linears"] = len(names)
                rec["weights_gib_after"] = round(torch.cuda.memory_allocated() / GIB, 2)
                # rel_diff_vs_previous is the fp8 error: against the bf16 forward just before, same inputs
            elif part.startswith("accum:"):  # fp8 GEMM accumulation for the parts after it: fast (default) or slow
                from worker.engine.kernels import fp8_linear

                mode = part.split(":", 1)[1]
                if mode not in ("fast", "slow"):
                    raise ValueError(f"accum:{mode}: expected accum:fast or accum:slow")
                fp8_linear.FAST_ACCUM = mode == "fast"
                res[f"dit_fp8_accum_{mode}"] = forward_time(f"dit fp8 linears, {mode} accumulation", args.iters)
            elif part == "vae":
                if vae is None:
                    vae = build_vae(seed=2)
                lat = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16, generator=gen)
                res["vae_decode"] = {}
                for bench_mode in (False, True):
                    torch.backends.cudnn.benchmark = bench_mode
                    with torch.inference_mode():
                        tm = cuda_time(lambda: vae.decode(lat), 1, 2)
                    res["vae_decode"][f"cudnn_benchmark={bench_mode}"] = tm
                    log("vae decode", bench_mode, tm)
            elif part == "qkv":
                with fused_qkv(model):
                    res["dit_eager_fused_qkv"] = forward_time("dit eager fused qkv", args.iters)
            elif part == "compile":
                mode = None if args.compile_mode == "default" else args.compile_mode
                compile_dit(model, mode)
                res["dit_compiled"] = forward_time(f"dit compiled ({args.compile_mode})", args.iters)
                res["dit_compiled"]["compile_mode"] = args.compile_mode
                try:
                    from torch._dynamo.utils import counters

                    res["dynamo"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break")}
                except Exception:  # noqa: BLE001
                    pass
            elif part == "recompile":
                torch._dynamo.reset()
                for block in model.blocks:
                    block._compiled_call_impl = None
                model._blocks_compiled = None
                torch.cuda.empty_cache()
                compile_dit(model, args.recompile_mode)
                if "reduce-overhead" in args.recompile_mode:
                    # CUDA-graph trees: each forward is a new generation, so mark it (outputs of the last are dead).
                    hook = model.register_forward_pre_hook(lambda *_: torch.compiler.cudagraph_mark_step_begin())
                try:
                    res["dit_recompiled"] = forward_time(f"dit compiled ({args.recompile_mode})", args.iters)
                finally:
                    if "reduce-overhead" in args.recompile_mode:
                        hook.remove()
                res["dit_recompiled"]["compile_mode"] = args.recompile_mode
                from torch._dynamo.utils import counters

                res["dit_recompiled"]["inductor_counters"] = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
                log("cudagraph counters", res["dit_recompiled"]["inductor_counters"])
            elif part == "profile":
                with torch.inference_mode():
                    res["profile"] = profile_once(lambda: model(**inputs))
                log("profile", res["profile"]["by_class_s"])
            elif part == "offload":
                # The 24 GB placement (conf/gpu/rtx4090_24.yaml): the last `stream_blocks` DiT blocks in pinned
                # host memory, VAE parked in host memory between uses; T5/CLIP are not part of the chunk here.
                from worker.engine.kernels.offload import BlockStreamer, OffloadedVAE

                ref_out = None
                BlockStreamer.attach(model, args.stream_blocks, "cuda")
                vae = OffloadedVAE(build_vae(seed=2), "cuda")
                torch.cuda.empty_cache()
                res["offload_resident_gib"] = round(torch.cuda.memory_allocated() / GIB, 2)
                log("offload resident", res["offload_resident_gib"])
                res["chunk_turbo_offload"] = run_chunk(model, vae, "turbo")
                log("chunk turbo offload", res["chunk_turbo_offload"])
            elif part == "quality_full":  # the whole 40-step, 3-pass chunk, run rather than estimated
                if vae is None:
                    vae = build_vae(seed=2)
                    res["warmup_chunk"] = run_chunk(model, vae, "quality", steps=1)
                    log("warm-up chunk", res["warmup_chunk"])
                res["chunk_quality"] = run_chunk(model, vae, "quality")
                log("chunk quality", res["chunk_quality"])
            elif part == "cudatests":
                import subprocess
                import sys

                proc = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider",
                     "--noconftest", "-o", "addopts=", "tests/engine/test_fp8_attention.py",
                     "tests/engine/test_fp8.py::test_fused_scaled_mm_matches_dequantised_path_on_gpu",
                     "tests/engine/test_fp8.py::test_fast_accumulation_on_gpu_stays_within_the_fp8_bound_at_the_dits_widest_k",
                     "tests/engine/test_runtime.py::test_quantising_at_load_uses_the_card_only_where_the_bf16_copy_fits"],
                    capture_output=True, text=True, timeout=240)
                res["cuda_tests"] = {"rc": proc.returncode, "tail": (proc.stdout + proc.stderr)[-3000:]}
                log("cuda tests rc", proc.returncode, proc.stdout[-800:])
            elif part in ("turbo", "fast", "turbo_reuse", "lightning"):
                if vae is None:
                    vae = build_vae(seed=2)
                    t0 = time.perf_counter()
                    # 2 steps, guidance on the first only: one batch-2 and one batch-1 call, so compiled blocks
                    # have both shapes before any timed chunk
                    res["warmup_chunk"] = run_chunk(model, vae, "turbo", steps=2, guidance_every=2)
                    res["warmup_chunk"]["wall_s"] = round(time.perf_counter() - t0, 2)
                    log("warm-up chunk", res["warmup_chunk"])
                key = f"chunk_{part}"
                n = 2
                while key in res:  # the same preset again after a change (backend, fp8): keep both
                    key, n = f"chunk_{part}_{n}", n + 1
                preset, every = ("turbo", args.reuse_every) if part == "turbo_reuse" else (part, 1)
                res[key] = run_chunk(model, vae, preset, chunks=args.chunks, guidance_every=every, keep_frames=True)
                frames = res[key].pop("frames_uint8")
                if preset == "turbo":
                    if first_turbo_frames is None:
                        first_turbo_frames = frames
                    else:
                        res[key]["frames_vs_first_turbo"] = compare_frames(frames, first_turbo_frames)
                del frames
                from worker.engine.kernels.attention import get_attention_backend

                res[key]["attention"] = get_attention_backend()
                res[key]["fp8"] = "dit_fp8" in res
                log(key, res[key])
            elif part == "quality":
                # 40 steps x 3 passes, batched into one batch-3 DiT call a step (one speaker: all passes share
                # the audio shape). Estimated: 40 x measured batch-3 forward + the turbo chunk's outside-DiT time.
                b3 = {k: torch.cat([v] * 3) if k not in ("t",) else v for k, v in inputs.items()}
                with torch.inference_mode():
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    model(**b3)
                    torch.cuda.synchronize()
                    first = time.perf_counter() - t0
                    tm = cuda_time(lambda: model(**b3), 0, 2)
                res["forward_batch3"] = {**tm, "first_call_s": round(first, 2)}
                log("forward batch 3", res["forward_batch3"])
        except Exception as exc:  # noqa: BLE001 - one failing part must not cost the others
            res.setdefault("errors", {})[part] = traceback.format_exc()[-3000:]
            log("ERROR", part, repr(exc)[:300])
        save()

    # ------------------------------------------------------------------ table
    rate = max(res.get("matmul_tflops", {}).values(), default=0.0)
    floor_fwd = flops / (rate * 1e12) if rate else float("nan")
    rows: list[tuple[str, float, float]] = []
    for key, label in (("dit_eager", "DiT forward bf16 eager (s)"), ("dit_eager_fused_qkv", "DiT forward bf16 eager, fused qkv (s)"),
                       ("dit_compiled", "DiT forward bf16 compiled (s)"), ("dit_recompiled", "DiT forward bf16 recompiled (s)")):
        if key in res:
            rows.append((label, res[key]["median_s"], floor_fwd))
    if "dit_compiled" in res:
        rows.append(("  compile time, first forward (s)", res["dit_compiled"]["first_call_s"], float("nan")))
    for key in res:  # the variants timed by backend:NAME and fp8, in the order they ran
        if key.startswith("dit_") and key not in ("dit_eager", "dit_eager_fused_qkv", "dit_compiled", "dit_recompiled"):
            rows.append((f"DiT forward, {key[4:]} (s)", res[key]["median_s"], floor_fwd))
    for key, c in list(res.items()):
        if not key.startswith(("chunk_turbo", "chunk_fast", "chunk_lightning")) or key == "chunk_turbo_offload":
            continue
        preset = c["preset"] + (" fp8" if c.get("fp8") else "") + f" [{c.get('attention', 'sdpa')}]"
        if c.get("guidance_every", 1) > 1:
            preset += f" guidance every {c['guidance_every']}"
        n_fwd = c.get("forwards", c["steps"] * c["passes_per_step"])
        rows.append((f"{preset} chunk (s)", c["chunk_s"], n_fwd * floor_fwd))
        rows.append((f"{preset} GPU-s per s of video", c["gpu_s_per_video_s"], n_fwd * floor_fwd / SECONDS_PER_CHUNK))
        rows.append((f"{preset} share outside DiT", c["outside_dit_share"], float("nan")))
    if "chunk_turbo_offload" in res:
        c = res["chunk_turbo_offload"]
        rows.append((f"turbo chunk, {args.stream_blocks} blocks streamed (s)", c["chunk_s"], 8 * floor_fwd))
        rows.append(("  peak VRAM allocated / reserved (GiB)", c["peak_memory_gib"], float("nan")))
        rows.append(("  (reserved)", c["peak_reserved_gib"], float("nan")))
    if "forward_batch3" in res:
        outside = res.get("chunk_turbo", {}).get("outside_dit_s", float("nan"))
        est = 40 * res["forward_batch3"]["median_s"] + outside
        res["quality_chunk_estimate_s"] = round(est, 2)
        rows.append(("quality chunk, estimated (s)", est, 120 * floor_fwd))
        rows.append(("quality GPU-s per s of video, est.", est / SECONDS_PER_CHUNK, 120 * floor_fwd / SECONDS_PER_CHUNK))
    res["table"] = [{"figure": f, "value": v, "floor": fl} for f, v, fl in rows]
    res["floor_forward_s"] = floor_fwd
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(f"\nGPU: {res['machine'].get('gpu')}  torch {res['machine'].get('torch')}  matmul {res.get('matmul_tflops')} TFLOP/s  "
          f"{res['tflop_per_forward']} TFLOP per forward")
    print("%-40s %10s %10s %7s" % ("figure", "value", "floor", "ratio"))
    for f, v, fl in rows:
        ratio = v / fl if fl == fl and fl else float("nan")
        print("%-40s %10.3f %10.3f %7.2f" % (f, v, fl, ratio))
    if res.get("errors"):
        print("errors in:", ", ".join(res["errors"]))


if __name__ == "__main__":
    main()
