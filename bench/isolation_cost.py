"""What audio_isolation costs: seconds of GPU (or CPU) time per minute of audio through htdemucs.

    python bench/isolation_cost.py --out $OUT/isolation_cost.json --minutes 1
    python bench/isolation_cost.py --out x.json --minutes 1 --weights /runpod-volume/weights/htdemucs/htdemucs.safetensors

The network is the worker's own (worker/engine/models/separation.py) at the published htdemucs size (42.0M
parameters, 7.8 s segments, 25% overlap) with random weights unless `--weights` names the converted file
(`infinitetalk weights isolation`); the cost does not depend on the weights' values. The track is `--minutes` of
44.1 kHz stereo (tones over noise). For each `--batch` (segments per forward) the whole track is separated
`--repeats` times after one warm-up run, as a job does it (the track on the host, each batch of windows sent to
the device and its vocals brought back); the median is the figure, divided by the minutes of audio. The
separation runs in float32 (`--tf32` lets matmuls and convolutions use TF32 on Ampere and later). The job also
resamples each file to 44.1 kHz and the vocals to 16 kHz on the CPU; `resample_s` times both for the same
track when soxr is installed. CUDA when available, else the CPU (`--device` to choose); `--scale tiny` runs the
tests' tiny network (what tests/bench/test_isolation_cost.py does on a CPU).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import log, machine_info, write_json  # noqa: E402
from worker.engine.models.separation import (  # noqa: E402
    HTDemucs,
    SeparationConfig,
    load_separation_strict,
    separate,
)


def test_track(samples: int, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """Stereo: a gliding tone, a bass line and a little noise (the cost is the same for any content)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    tone = torch.sin(2 * math.pi * (220 + 30 * torch.sin(2 * math.pi * 0.5 * t)) * t)
    bass = 0.5 * torch.sin(2 * math.pi * 55 * t)
    noise = 0.05 * torch.randn(2, samples, generator=g, dtype=torch.float64)
    return (torch.stack([0.4 * tone + bass, 0.4 * tone - bass]) + noise).float()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_separation(model: HTDemucs, track: torch.Tensor, batch: int, repeats: int) -> dict:
    device = next(model.parameters()).device
    separate(model, track, batch=batch, sources=("vocals",))  # warm-up: kernels chosen, memory pools filled
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stems = separate(model, track, batch=batch, sources=("vocals",))  # as the job runs it
        _sync(device)
        times.append(time.perf_counter() - t0)
    vocals = stems[0]
    out = {
        "batch": batch,
        "times_s": [round(t, 4) for t in times],
        "median_s": round(statistics.median(times), 4),
        "vocals_samples": int(vocals.shape[-1]),
        "vocals_finite": bool(torch.isfinite(vocals).all()),
    }
    if device.type == "cuda":
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated(device) / 1024**3, 3)
    return out


def time_resampling(track: torch.Tensor, rate: int) -> dict | None:
    """The job's CPU work around the network: a 48 kHz file to 44.1 kHz, the vocals to 16 kHz mono."""
    try:
        import soxr
    except ImportError:
        return None
    src = soxr.resample(track.numpy().T, rate, 48000, quality="HQ")  # a 48 kHz file of the same length
    t0 = time.perf_counter()
    up = soxr.resample(src, 48000, rate, quality="HQ")
    soxr.resample(up.mean(axis=1), rate, 16000, quality="HQ")
    return {"resample_s": round(time.perf_counter() - t0, 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--minutes", type=float, default=1.0, help="length of the test track")
    p.add_argument("--scale", choices=("full", "tiny"), default="full")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--weights", type=Path, default=None, help="converted htdemucs safetensors (default: random)")
    p.add_argument("--batch", default="1,4,8", help="segments per forward, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions on CUDA")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    cfg = SeparationConfig.published() if args.scale == "full" else SeparationConfig.tiny()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = HTDemucs(cfg)
    if args.weights is not None:
        load_separation_strict(model, args.weights)
    model = model.to(device).eval()
    _sync(device)
    load_s = round(time.perf_counter() - t0, 3)
    samples = max(1, round(args.minutes * 60 * cfg.samplerate))
    track = test_track(samples, cfg.samplerate)
    segments = len(range(0, samples, int(0.75 * cfg.segment_samples)))
    log(f"htdemucs {args.scale} on {device}: {samples / cfg.samplerate:.1f} s of audio, {segments} segments")

    runs = []
    for batch in (int(b) for b in args.batch.split(",")):
        run = time_separation(model, track, batch, args.repeats)
        run["seconds_per_audio_minute"] = round(run["median_s"] / args.minutes, 4)
        run["realtime_factor"] = round(samples / cfg.samplerate / run["median_s"], 2)
        log(f"batch {batch}: {run['median_s']} s -> {run['seconds_per_audio_minute']} s per audio minute")
        runs.append(run)
    best = min(runs, key=lambda r: r["median_s"])
    result = {
        "bench": "isolation_cost",
        "machine": machine_info(),
        "device": str(device),
        "scale": args.scale,
        "weights": str(args.weights) if args.weights else "random",
        "tf32": bool(args.tf32),
        "config": cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "audio_minutes": args.minutes,
        "audio_samples": samples,
        "segments": segments,
        "load_s": load_s,
        "runs": runs,
        "best_batch": best["batch"],
        "seconds_per_audio_minute": best["seconds_per_audio_minute"],
        "cpu_resampling": time_resampling(track, cfg.samplerate),
    }
    write_json(args.out, result)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
