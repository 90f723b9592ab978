"""A rough GPU-time and cost estimate shown before a job is submitted.

These are estimates, not measurements of this worker. The model:

- seconds per DiT forward on an H100 80GB at 480p (81 frames, bf16, compiled blocks, the H100
  tier's FlashAttention-4): 2.82 s for one speaker, measured (bench/README.md section 8); 3.34 s for
  two, scaled by the 1.18 two-speaker/one-speaker ratio measured eager (section 1). A batch of
  guidance passes costs the sum of its passes (measured: batch 2 = 2 x batch 1). 720p costs 3.63x
  as much (the measured 11.08 s / 3.05 s ratio of the diffusers DiT at the two sizes). Tiers that run the DiT in
  fp8 (`quant: fp8` in conf/gpu: H100, H200) take 0.70 of that (1.962 s vs 2.81 s measured on an H200, bench
  section 16).
- forwards per step: 3 guidance passes when text guidance is on (quality preset), 2 when text
  guidance is 1 (fast, turbo), 1 when audio guidance is 1 as well (lightning); steps from the preset (quality 40, fast 8, turbo 4) unless overridden.
  With `guidance_every` k the guidance passes run on every k-th step and the others run one pass.
- per chunk outside the DiT (VAE encode/decode, colour, uint8): 3.0 s at 480p (measured 2.0-3.0 s,
  section 8), 7 s at 720p (the 480p figure scaled by pixels, a guess).
- per job: 15 s warm overhead (download, audio features, text and image encoders, mux, upload).
- cold start, paid once when no worker is warm: 53.8 s from process start to a ready engine, measured on
  the H100 from a bf16 bundle on local disk at 1.4 GB/s (bench/README.md section 9, run J4), plus 6.6 s for
  the first compiled forward with the volume's compile cache on the tiers that compile (section 10: h100_80,
  h200_141, a100_80). The other tiers read the same bytes and are given the same load time (not measured).
- other GPUs scale the H100 time by their dense bf16 matmul rate relative to an H100
  (H200 1.0, A100 0.32, L40S 0.33, RTX 4090 0.15, the last two also pay for offloading).
- chunks: `streaming` (the default) covers the audio, 81 frames first and 72 new frames (9 motion
  frames carried) per further chunk, at 25 fps; `clip` renders one chunk of 81 frames.
- price: `price_per_hour_usd` from conf/gpu/<tier>.yaml (a snapshot of Runpod's serverless
  flex prices, per GPU), with the same numbers built in for clients installed without conf/.
- several GPUs (tiers with `parallel.ranks` > 1, read from conf/gpu/<tier>.yaml the same way): the
  worker's price is the per-GPU price x GPUs; billed GPU-seconds = the one-GPU seconds / scaling
  efficiency, wall time = billed / GPUs. ASSUMPTION: the efficiency is 85%, the sequence-parallelism
  issue's target, NOT a measurement (no multi-GPU machine has run bench/parallel_scaling.py yet); the
  whole job, encoders and I/O included, is taken to scale alike. The cold start is paid on every GPU.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

from contract.choices import VIDEO_FPS

__all__ = [
    "GPU_TIERS",
    "GPU_COUNTS",
    "FP8_TIERS",
    "load_fp8_tiers",
    "PARALLEL_EFFICIENCY",
    "load_gpu_counts",
    "PRESETS",
    "Estimate",
    "estimate_job",
    "count_chunks",
    "media_duration_s",
    "load_gpu_prices",
    "format_estimate",
]

FIRST_CHUNK_FRAMES = 81
MOTION_FRAMES = 9

FORWARD_S_480_H100 = {1: 2.82, 2: 3.34}
# The DiT forward at the fp8 tiers' defaults (gpu.quant: fp8: fp8 linears + FA3 fp8 attention) over the bf16 one
# above: 1.962 s vs 2.81 s compiled bf16 FA3, both measured on an H200 (bench/README.md sections 12 and 16).
FP8_FORWARD_FACTOR = 1.962 / 2.81
SIZE_FACTOR = {"infinitetalk-480": 1.0, "infinitetalk-720": 3.63}
CHUNK_OVERHEAD_S = {"infinitetalk-480": 3.0, "infinitetalk-720": 7.0}
JOB_OVERHEAD_S = 15.0
LOAD_S = 53.8  # bench/README.md section 9, J4
COMPILE_FIRST_S = 6.6  # bench/README.md section 10, K2 (compile cache on the volume)

# preset -> (steps, text guidance on)
PRESETS: dict[str, tuple[int, bool]] = {"quality": (40, True), "fast": (8, False), "turbo": (4, False),
                                        "lightning": (4, False)}
# presets whose audio guidance is 1 as well: one DiT pass a step (conf/sampler/lightning.yaml)
NO_GUIDANCE_PRESETS = frozenset({"lightning"})

# ASSUMED (the sequence-parallelism issue's target, not measured): several-GPU speed-up = GPUs x this
PARALLEL_EFFICIENCY = 0.85

# tier -> (speed of one of its GPUs relative to an H100, price per GPU-hour in USD, largest size it serves)
_BUILTIN_TIERS: dict[str, tuple[float, float, str]] = {
    "h200_141": (1.0, 5.58, "infinitetalk-720"),
    "h200_141x4": (1.0, 5.58, "infinitetalk-720"),
    "h200_141x8": (1.0, 5.58, "infinitetalk-720"),
    "h100_80": (1.0, 4.176, "infinitetalk-720"),
    "h100_80x8": (1.0, 4.176, "infinitetalk-720"),
    "a100_80": (0.32, 2.736, "infinitetalk-720"),
    "l40s_48": (0.33, 1.908, "infinitetalk-720"),
    "rtx4090_24": (0.15, 1.116, "infinitetalk-480"),
}

# tier -> seconds a cold worker spends before its first step (disk-bound, so not scaled by GPU speed)
COLD_START_S: dict[str, float] = {
    "h200_141": LOAD_S + COMPILE_FIRST_S,
    "h100_80": LOAD_S + COMPILE_FIRST_S,
    "a100_80": LOAD_S + COMPILE_FIRST_S,
    "l40s_48": LOAD_S,
    "rtx4090_24": LOAD_S,
    "h200_141x4": LOAD_S,  # the several-GPU tiers do not compile (conf/gpu); same load time assumed
    "h200_141x8": LOAD_S,
    "h100_80x8": LOAD_S,
}
# tiers that run the DiT in fp8 (conf/gpu `quant: fp8`); built in for clients without conf/
_BUILTIN_FP8 = frozenset({"h200_141", "h200_141x4", "h200_141x8", "h100_80", "h100_80x8"})
# tier -> GPUs a worker holds (conf/gpu/<tier>.yaml parallel.ranks); built in for clients without conf/
_BUILTIN_GPUS: dict[str, int] = {"h200_141x4": 4, "h200_141x8": 8, "h100_80x8": 8}

_CONF_GPU = Path(__file__).resolve().parents[1] / "conf" / "gpu"


def _scan(f: Path, pattern: str, seen: frozenset[Path] = frozenset()) -> str | None:
    """The first match of `pattern` in a tier's yaml, else in the tier it extends (a `- <tier>` entry of its
    defaults list naming a sibling file, as conf/gpu/h200_141x4.yaml extends h200_141): the client has no Hydra."""
    text = f.read_text()
    m = re.search(pattern, text, re.M)
    if m:
        return m.group(1)
    for parent in re.findall(r"^\s*-\s*([A-Za-z0-9_]+)\s*$", text, re.M):
        p = f.with_name(f"{parent}.yaml")
        if p.is_file() and p not in seen:
            found = _scan(p, pattern, seen | {f})
            if found is not None:
                return found
    return None


def load_gpu_prices(conf_dir: Path = _CONF_GPU) -> dict[str, float]:
    """price_per_hour_usd (per GPU) per tier from conf/gpu/*.yaml (a line scan; the client has no Hydra)."""
    prices: dict[str, float] = {}
    if not conf_dir.is_dir():
        return prices
    for f in sorted(conf_dir.glob("*.yaml")):
        v = _scan(f, r"^price_per_hour_usd:\s*([0-9.]+)")
        if v is not None:
            prices[f.stem] = float(v)
    return prices


def load_gpu_counts(conf_dir: Path = _CONF_GPU) -> dict[str, int]:
    """GPUs per tier (its `ranks:` under `parallel:`) from conf/gpu/*.yaml, by the same line scan as prices;
    tiers that do not set it hold one GPU."""
    counts: dict[str, int] = {}
    if not conf_dir.is_dir():
        return counts
    for f in sorted(conf_dir.glob("*.yaml")):
        v = _scan(f, r"^\s+ranks:\s*([0-9]+)")
        counts[f.stem] = int(v) if v is not None else 1
    return counts


def load_fp8_tiers(conf_dir: Path = _CONF_GPU) -> frozenset[str]:
    """Tiers whose yaml (or the tier it extends) says `quant: fp8` (the DiT runs fp8 whatever the model)."""
    if not conf_dir.is_dir():
        return frozenset(_BUILTIN_FP8)
    return frozenset(f.stem for f in sorted(conf_dir.glob("*.yaml")) if _scan(f, r"^quant:\s*(\w+)") == "fp8")


def _gpus() -> dict[str, int]:
    counts = load_gpu_counts()
    return {name: counts.get(name, _BUILTIN_GPUS.get(name, 1)) for name in _BUILTIN_TIERS}


# tier -> GPUs one worker holds (one job runs on all of them)
GPU_COUNTS = _gpus()


def _tiers() -> dict[str, tuple[float, float, str]]:
    """tier -> (speed per GPU, the WORKER's price per hour = per-GPU price x GPUs, largest size)."""
    prices = load_gpu_prices()
    return {name: (speed, prices.get(name, price) * GPU_COUNTS[name], size)
            for name, (speed, price, size) in _BUILTIN_TIERS.items()}


GPU_TIERS = _tiers()
FP8_TIERS = load_fp8_tiers()


def count_chunks(duration_s: float, mode: str = "streaming", frame_num: int = FIRST_CHUNK_FRAMES,
                 motion_frame: int = MOTION_FRAMES) -> int:
    if mode == "clip":
        return 1
    frames = max(1, math.ceil(duration_s * VIDEO_FPS))
    if frames <= frame_num:
        return 1
    return 1 + math.ceil((frames - frame_num) / (frame_num - motion_frame))


@dataclass(frozen=True)
class Estimate:
    tier: str
    chunks: int
    steps: int
    passes: int
    gpu_seconds: float
    gpu_seconds_cold: float
    price_per_hour_usd: float
    video_seconds: float
    warning: str | None = None
    guidance_every: int = 1
    audio_seconds: float = 0.0
    gpus: int = 1
    scaling: float = 1.0  # assumed parallel efficiency (1.0 on one GPU)

    @property
    def wall_seconds(self) -> float:
        """How long a warm job takes: billed GPU-seconds spread over the worker's GPUs."""
        return self.gpu_seconds / self.gpus

    @property
    def wall_seconds_cold(self) -> float:
        return self.gpu_seconds_cold / self.gpus

    @property
    def cold_start_s(self) -> float:
        """The surcharge when no worker is warm: model load (+ first compile), billed once."""
        return self.gpu_seconds_cold - self.gpu_seconds

    @property
    def truncated_s(self) -> float:
        """Seconds of audio a clip leaves out (0 when the video covers the audio)."""
        return max(0.0, self.audio_seconds - self.video_seconds)

    @property
    def forwards_per_chunk(self) -> int:
        """DiT pass-equivalents: full guidance on steps 0, k, 2k, ..., one pass on the others."""
        full = math.ceil(self.steps / self.guidance_every)
        return full * self.passes + (self.steps - full)

    @property
    def cost_usd(self) -> float:
        return self.wall_seconds * self.price_per_hour_usd / 3600.0

    @property
    def cost_usd_cold(self) -> float:
        return self.wall_seconds_cold * self.price_per_hour_usd / 3600.0

    @property
    def cold_start_usd(self) -> float:
        return self.cold_start_s / self.gpus * self.price_per_hour_usd / 3600.0


def estimate_job(*, audio_s: float, tier: str = "h100_80", preset: str = "fast", size: str = "infinitetalk-480",
                 mode: str = "streaming", speakers: int = 1, sample_steps: int | None = None,
                 text_guide_scale: float | None = None, frame_num: int | None = None,
                 motion_frame: int | None = None, guidance_every: int | None = None) -> Estimate:
    if not isinstance(audio_s, (int, float)) or not math.isfinite(audio_s) or audio_s <= 0:
        raise ValueError(f"audio seconds must be a positive number, got {audio_s}")
    if mode not in ("clip", "streaming"):
        raise ValueError(f"unknown mode {mode!r}; one of clip, streaming")
    if tier not in GPU_TIERS:
        raise ValueError(f"unknown GPU tier {tier!r}; one of {', '.join(GPU_TIERS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; one of {', '.join(PRESETS)}")
    if size not in SIZE_FACTOR:
        raise ValueError(f"unknown size {size!r}")
    speed, price, max_size = GPU_TIERS[tier]
    steps, text_on = PRESETS[preset]
    steps = sample_steps or steps
    if text_guide_scale is not None:
        text_on = text_guide_scale != 1.0
    passes = 3 if text_on else 1 if preset in NO_GUIDANCE_PRESETS else 2
    every = 1 if guidance_every is None else guidance_every
    if every < 1:
        raise ValueError("guidance_every must be >= 1")
    fn = frame_num or FIRST_CHUNK_FRAMES
    mf = motion_frame or MOTION_FRAMES
    chunks = count_chunks(audio_s, mode, fn, mf)
    forward = FORWARD_S_480_H100[2 if speakers >= 2 else 1] * SIZE_FACTOR[size] * (fn / FIRST_CHUNK_FRAMES)
    if tier in FP8_TIERS:
        forward *= FP8_FORWARD_FACTOR
    shape = Estimate(tier, chunks, steps, passes, 0.0, 0.0, price, 0.0, None, every)
    per_chunk = shape.forwards_per_chunk * forward + CHUNK_OVERHEAD_S[size]
    gpus = GPU_COUNTS[tier]
    scaling = PARALLEL_EFFICIENCY if gpus > 1 else 1.0
    warm = (chunks * per_chunk + JOB_OVERHEAD_S) / speed / scaling  # billed GPU-seconds, all GPUs together
    cold = warm + COLD_START_S[tier] * gpus  # every GPU is held while the model loads
    video_s = min(fn / VIDEO_FPS, audio_s) if mode == "clip" else audio_s
    warning = None
    if SIZE_FACTOR[size] > SIZE_FACTOR[max_size]:
        warning = f"{tier} serves up to {max_size}; the worker will refuse {size}"
    return Estimate(tier, chunks, steps, passes, warm, cold, price, video_s, warning, every, float(audio_s), gpus,
                    scaling)


def format_estimate(est: Estimate) -> str:
    text = (
        f"GPU time on {est.tier}: ≈ {_duration(est.gpu_seconds)} on a warm worker (≈ ${est.cost_usd:.2f})"
        f" + ≈ {_duration(est.cold_start_s)} cold-start surcharge if no worker is warm (≈ ${est.cold_start_usd:.2f})"
        f" = ≈ {_duration(est.gpu_seconds_cold)}, ≈ ${est.cost_usd_cold:.2f} in all"
        f" — {est.chunks} chunk(s) × {est.steps} steps × {est.passes} passes"
        + (f" (guidance every {est.guidance_every} steps)" if est.guidance_every > 1 else "")
        + f", {est.video_seconds:.1f} s of video"
        f" (${est.price_per_hour_usd:.3f}/h; rough model, see client/estimate.py)"
    )
    if est.gpus > 1:
        text += (f"\n{est.gpus} GPUs per job: ≈ {_duration(est.wall_seconds)} wall time warm,"
                 f" ≈ {_duration(est.wall_seconds_cold)} cold; GPU time is summed over the {est.gpus} GPUs"
                 f" (assumes {est.scaling:.0%} scaling, not measured)")
    if est.truncated_s > 0.005:
        text += f"\n⚠ clip mode renders {est.video_seconds:.1f} s and leaves out {est.truncated_s:.1f} s of the audio"
    if est.warning:
        text += f"\n⚠ {est.warning}"
    return text


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def media_duration_s(path: str | Path) -> float | None:
    """Audio length: the wave module for WAV, ffprobe for anything else when it is installed."""
    p = Path(path)
    try:
        with wave.open(str(p), "rb") as w:
            rate = w.getframerate()
            return w.getnframes() / float(rate) if rate else None
    except (wave.Error, EOFError, OSError):
        pass
    probe = shutil.which("ffprobe")
    if probe is None:
        return None
    try:
        out = subprocess.run(
            [probe, "-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", str(p)],
            capture_output=True, text=True, timeout=20, check=False,
        ).stdout.strip()
        return float(out) if out and out != "N/A" else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
