"""One generation chunk end to end through the engine's own loop (`worker.engine.sampling.generation.generate`),
with random weights: VAE encode of the condition, the sampling steps with batched guidance passes,
VAE decode, Lab colour correction and the uint8 conversion, timed as a whole and by stage.

Used by `bench/run_suite.py`; kept apart so a later benchmark (offload, 720p) can reuse it. CLIP, T5 and
wav2vec2 are not run: the loop takes their outputs (random tensors of the right shapes), and in the
worker they run once per job (T5, wav2vec2) or are cached per condition frame (CLIP).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from worker.engine.sampling import generation
from worker.engine.sampling.generation import GenerationInputs, GenerationSettings, generate
from worker.engine.models.vae import VAEConfig, WanVAE, WanVAEModel

SECONDS_PER_CHUNK = 72 / 25  # 81 frames, 9 of them motion frames carried over: 72 new frames at 25 fps

# The sampler presets of conf/sampler/*.yaml at 480p (steps, text scale, audio scale, shift).
PRESETS = {
    "turbo": dict(sample_steps=4, text_guide_scale=1.0, audio_guide_scale=2.0, sample_shift=2.0),
    "fast": dict(sample_steps=8, text_guide_scale=1.0, audio_guide_scale=2.0, sample_shift=2.0),
    "lightning": dict(sample_steps=4, text_guide_scale=1.0, audio_guide_scale=1.0, sample_shift=2.0),  # guidance off: one pass a step
    "quality": dict(sample_steps=40, text_guide_scale=5.0, audio_guide_scale=4.0, sample_shift=7.0),
}


def build_vae(seed: int, dtype: torch.dtype = torch.bfloat16) -> WanVAE:
    """Full-size Wan2.1 VAE on the GPU with random weights (N(0, 1/fan_in) kernels, unit norm scales, zero biases)."""
    model = WanVAEModel.on_meta(VAEConfig()).to(dtype).to_empty(device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, device="cuda") / math.sqrt(p[0].numel()))
            else:
                p.zero_()
        for b in model.buffers():
            b.zero_()
    return WanVAE(model)


def _timed_host(fn, times: dict[str, float], key: str):
    def run(*args, **kwargs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()  # the colour correction runs on the GPU now: count its kernels, not the launches
        times[key] = times.get(key, 0.0) + time.perf_counter() - t0
        return out

    return run


class _TimedVAE:
    """Forwards encode/decode to a WanVAE and records each call's wall time (device synchronised)."""

    def __init__(self, vae: WanVAE, times: dict[str, float]) -> None:
        self.vae, self.times = vae, times

    def _timed(self, key: str, fn, x):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(x)
        torch.cuda.synchronize()
        self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - t0
        return out

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self._timed("vae_encode_s", self.vae.encode, video)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self._timed("vae_decode_s", self.vae.decode, latent)


@dataclass
class _ForwardTimer:
    """CUDA events around every DiT call (hooks on the top module, so compiled blocks are covered)."""

    events: list[tuple[torch.cuda.Event, torch.cuda.Event, int]] = field(default_factory=list)
    _open: Any = None

    def attach(self, dit: torch.nn.Module) -> list:
        def pre(_module, args):
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._open = (start, int(args[0].shape[0]))

        def post(_module, _args, _out):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((self._open[0], end, self._open[1]))

        return [dit.register_forward_pre_hook(pre), dit.register_forward_hook(post)]

    def summary(self, since: int = 0) -> dict[str, Any]:
        torch.cuda.synchronize()
        events = self.events[since:]
        times = [s.elapsed_time(e) / 1000.0 for s, e, _ in events]
        return {
            "dit_calls": len(times),
            "dit_batch": sorted({b for _, _, b in events}),
            "dit_s": round(sum(times), 3),
            "dit_call_s": [round(t, 3) for t in times],
        }


def run_chunk(
    dit: torch.nn.Module,
    vae: WanVAE,
    preset: str,
    *,
    steps: int | None = None,
    height: int = 480,
    width: int = 832,
    seed: int = 0,
    chunks: int = 1,
    guidance_every: int = 1,
    keep_frames: bool = False,
) -> dict[str, Any]:
    """`chunks` 81-frame chunks (one speaker; clip mode for one, streaming for more) with a preset's sampling
    settings; returns timings. With several chunks the headline figures are the last chunk's (the steady
    state of a long job: motion frames re-encoded, the image's condition latent and CLIP features cached).
    `keep_frames`: the last chunk's uint8 frames come back under "frames_uint8" (numpy; not JSON) so that
    two configurations' videos can be compared (same seeds and inputs, so only the arithmetic differs)."""
    p = dict(PRESETS[preset])
    if steps is not None:
        p["sample_steps"] = steps
    gen = torch.Generator().manual_seed(seed)
    max_frames = 81 + 72 * (chunks - 1)
    # An explicit one-entry bucket table pins the output size (the 480 tier has no 480x832 bucket; its
    # 16:9 neighbour is 448x896, 32,928 tokens against 32,760 here).
    settings = GenerationSettings(
        **p, seed=42, frame_num=81, motion_frame=9, mode="clip" if chunks == 1 else "streaming",
        max_frames=max_frames, color_correction_strength=1.0,
        bucket={"%.2f" % (height / width): ([height, width], 1)}, batch_passes=True, guidance_every=guidance_every,
    )
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    audio = torch.randn(max_frames + 19, 12, 768, generator=gen)
    context = torch.randn(120, 4096, generator=gen).to("cuda", torch.bfloat16)
    context_null = torch.randn(40, 4096, generator=gen).to("cuda", torch.bfloat16)
    clip_fea = torch.randn(1, 257, 1280, generator=gen).to("cuda")
    inputs = GenerationInputs(cond=image, audio=(audio,), context=context, context_null=context_null)

    stages: dict[str, float] = {}
    timer = _ForwardTimer()
    hooks = timer.attach(dit)
    # Host-side stages the loop calls by module-level name: timed by wrapping them for this chunk only.
    saved = {name: getattr(generation, name) for name in ("match_colors", "lab_reference", "to_uint8_frames")}
    for name, fn in saved.items():
        setattr(generation, name, _timed_host(fn, stages, name + "_s"))
    per_chunk: list[dict[str, Any]] = []
    last_frames = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            t_prev, stages_prev, calls_prev = t0, {}, 0
            for chunk in generate(dit, _TimedVAE(vae, stages), lambda _img: clip_fea, inputs, settings):
                torch.cuda.synchronize()
                now = time.perf_counter()
                fw = timer.summary(since=calls_prev)
                wall = now - t_prev
                per_chunk.append({
                    "chunk_s": round(wall, 3),
                    "new_frames": int(chunk.frames_uint8.shape[0]),
                    **fw,
                    **{k: round(v - stages_prev.get(k, 0.0), 3) for k, v in stages.items()},
                    "outside_dit_s": round(wall - fw["dit_s"], 3),
                    "outside_dit_share": round(1 - fw["dit_s"] / wall, 4),
                })
                t_prev, stages_prev, calls_prev = now, dict(stages), len(timer.events)
                if keep_frames:
                    last_frames = np.asarray(chunk.frames_uint8).copy()
        total = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
        for name, fn in saved.items():
            setattr(generation, name, fn)
    last = per_chunk[-1]
    frames_total = sum(c["new_frames"] for c in per_chunk)
    rec = {
        "preset": preset,
        "steps": p["sample_steps"],
        "passes_per_step": len(settings.guidance.branches),
        "guidance_every": guidance_every,
        # DiT pass-equivalents a chunk: every guidance pass on steps 0, k, 2k, ...; the conditional one between
        "forwards": sum(len(settings.guidance.branches) if settings.guidance.full_step(i) else 1
                        for i in range(p["sample_steps"])),
        "size": [height, width],
        "chunks": len(per_chunk),
        **last,
        # per second of the chunk's new frames: 72 at 25 fps for a chunk after the first (its motion frames
        # are the previous chunk's); a single clip-mode chunk is counted the same way, as before
        "gpu_s_per_video_s": round(last["chunk_s"] / SECONDS_PER_CHUNK, 3),
        "job_s": round(total, 3),
        "job_video_s": round(frames_total / 25, 3),
        "job_gpu_s_per_video_s": round(total / (frames_total / 25), 3),
        "per_chunk": per_chunk,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 1024**3, 2),
    }
    if keep_frames:
        rec["frames_uint8"] = last_frames
    return rec
