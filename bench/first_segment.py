"""Time from a job's start to its first playable preview segment (issue 17).

Runs one streaming job in this process through worker.job.run_job with the worker's real config
(the tiny model with `--tiny`, on the CPU in tests; the real model on a GPU) and records, from the
moment run_job is called:
- `first_chunk_s`: the engine yields the first chunk's frames (its sampling and VAE decode are over);
- `first_segment_s`: the job's progress first carries `preview.segments >= 1`: that segment is
  encoded and stored, and the playlist naming it is stored too, so a player can start;
- `segment_after_chunk_s` = first_segment_s - first_chunk_s: the preview's own latency, which the
  issue wants within 5 s on the GPU (turbo, 480p);
- the same for every later chunk/segment, and the whole job's time.

It does not import torch itself: the worker does, in its load stage. Usage:
  python bench/first_segment.py --tiny --audio-s 8 --out first_segment.json        (CPU, seconds)
  python bench/first_segment.py --preset turbo --size infinitetalk-480 --out $OUT/first_segment.json  (GPU)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from contract.choices import OUTPUT_TARGETS  # noqa: E402

MEDIA = ROOT / "examples" / "media"


def speech(path: Path, seconds: float) -> Path:
    wave, rate = sf.read(MEDIA / "speech_person1.wav", dtype="float32")
    wave = wave if wave.ndim == 1 else wave.mean(axis=1)
    sf.write(path, np.tile(wave, int(np.ceil(seconds * rate / len(wave))))[: int(seconds * rate)], rate)
    return path


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from configuration import compose_config
    from worker.job import JobContext, run_job

    overrides = [f"server.work_dir={work / 'work'}", f"storage.local.root={work / 'outputs'}",
                 f"server.allowed_roots=[{work}]", *args.override]
    if args.tiny:
        overrides += [f"server.cache_dir={args.cache or work / 'cache'}"]
    cfg = compose_config(overrides)
    if args.tiny and cfg.model.kind != "tiny":
        raise SystemExit("--tiny: the composed config is not the tiny model (set it with --override)")
    ctx = JobContext.create(cfg, extra_roots=[MEDIA])
    engine = ctx.engine.get()  # loaded before the clock starts: a warm worker's first segment
    chunk_times: list[float] = []
    original = engine.generate

    def timed_generate(*a: Any, **kw: Any):
        for chunk in original(*a, **kw):
            chunk_times.append(time.perf_counter())
            yield chunk

    engine.generate = timed_generate  # the bench's own stopwatch around the real engine
    segment_times: dict[int, float] = {}

    def sink(payload: dict[str, Any]) -> None:
        n = (payload.get("preview") or {}).get("segments") or 0
        if n and n not in segment_times:
            segment_times[n] = time.perf_counter()

    job = {"image": str(MEDIA / "portrait.png"), "audio": str(speech(work / "speech.wav", args.audio_s)),
           "mode": "streaming", "sampler": args.preset, "seed": 1, "output": {"target": args.output}}
    if args.size:
        job["size"] = args.size
    if args.steps:
        job["sample_steps"] = args.steps
    start = time.perf_counter()
    out = run_job("bench-first-segment", job, ctx, sink)
    total = time.perf_counter() - start
    segs = [segment_times[k] - start for k in sorted(segment_times)]
    chunks = [t - start for t in chunk_times]
    lags = [round(s - c, 3) for s, c in zip(segs, chunks)]
    return {
        "first_chunk_s": round(chunks[0], 3) if chunks else None,
        "first_segment_s": round(segs[0], 3) if segs else None,
        "segment_after_chunk_s": lags[0] if lags else None,
        "segment_after_chunk_all_s": lags,
        "chunks": len(chunks),
        "segments": out.get("preview", {}).get("segments"),
        "job_s": round(total, 3),
        "video_s": out["duration_s"],
        "size": [out["width"], out["height"]],
        "preset": args.preset,
        "timings_s": out["timings_s"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (tests)")
    p.add_argument("--cache", type=Path, help="tiny: where its checkpoint is written (reused between runs)")
    p.add_argument("--audio-s", type=float, default=12.0, help="seconds of speech (several chunks)")
    p.add_argument("--preset", default="turbo")
    p.add_argument("--size", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--output", default="local", choices=[t for t in OUTPUT_TARGETS if t != "inline"])
    p.add_argument("--override", action="append", default=[], help="a worker config override (repeatable)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="first-segment-") as tmp:
        result = measure(args, Path(tmp))
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
