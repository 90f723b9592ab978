"""Host time the MP4 encoder spends on one chunk: what the job loop used to leave the GPU idle for.

    .venv/bin/python bench/mux_cost.py --out bench/results/<date>/mux_cost.json

Frames: the example portrait resized to the 480p / 720p 16:9 frame, moved by a small sub-pixel drift and
per-frame sensor noise so that the encoder sees motion (a still image encodes far faster than video).
Each chunk is 72 new frames (a streaming chunk after the first) written through `worker.media.mux.Mp4Writer`
with the worker's settings (libx264, preset veryfast, crf 18); the median of `--repeats` chunks is the
figure. Runs anywhere (no GPU); the chunk time is a CPU figure of the machine it runs on.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.media.mux import Mp4Writer  # noqa: E402

SIZES = {"480p": (480, 832), "720p": (720, 1280)}
CHUNK_FRAMES = 72


def frames_for(size: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    h, w = size
    base = np.asarray(Image.open(ROOT / "examples/media/portrait.png").convert("RGB").resize((w + 8, h + 8)))
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        dx, dy = int(4 + 3 * np.sin(i / 9)), int(4 + 2 * np.cos(i / 13))
        crop = base[dy : dy + h, dx : dx + w].astype(np.int16) + rng.integers(-3, 4, (h, w, 3))
        out[i] = np.clip(crop, 0, 255)
    return out


def measure(size_name: str, repeats: int) -> dict:
    frames = frames_for(SIZES[size_name], CHUNK_FRAMES)
    audio = np.zeros(16000 * (repeats + 1) * CHUNK_FRAMES // 25, np.float32)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.mp4"
        with Mp4Writer(path, audio, fps=25, audio_rate=16000) as writer:
            for _ in range(repeats):
                t0 = time.perf_counter()
                writer.write_frames(frames)
                times.append(time.perf_counter() - t0)
        size = path.stat().st_size
    return {"size": size_name, "chunk_frames": CHUNK_FRAMES, "times_s": [round(t, 3) for t in times],
            "median_s": round(statistics.median(times), 3), "mp4_bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    res = {"cpu_count": os.cpu_count(), "results": [measure(s, args.repeats) for s in SIZES]}
    for r in res["results"]:
        print(f"{r['size']}: {r['median_s']} s per {CHUNK_FRAMES}-frame chunk (times {r['times_s']})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
