"""Lab colour correction on the GPU (`worker.engine.sampling.color.match_colors`): parity with scikit-image's per-frame
CPU path on random full-size frames, and the time for one 81-frame 480x832 chunk.

    PYTHONUNBUFFERED=1 python3 bench/color_gpu.py --out $OUT/color.json
"""
from __future__ import annotations

import argparse
import time

from common import cuda_time, log, machine_info, write_json

import torch

from worker.engine.sampling.color import lab_reference, match_colors


def _skimage_match(video: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from testkit.color_oracle import skimage_match

    return skimage_match(video, ref, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    res = {"machine": machine_info()}
    g = torch.Generator().manual_seed(0)
    video = (torch.rand(3, 81, 480, 832, generator=g) * 2.2 - 1.1)
    ref = torch.rand(3, 1, 480, 832, generator=g) * 0.6 - 0.4
    ref[0] += 0.4
    vd, rd = video.cuda(), ref.cuda()
    got = match_colors(vd[:, :4], rd, 1.0).cpu()
    t0 = time.perf_counter()
    want = _skimage_match(video[:, :4], ref)
    res["skimage_cpu_s_per_frame"] = round((time.perf_counter() - t0) / 4, 4)
    res["max_abs_diff_vs_skimage"] = float((got - want).abs().max())
    stats = lab_reference(rd)
    res["gpu_81_frames"] = cuda_time(lambda: match_colors(vd, stats, 1.0), 2, 5)
    res["gpu_lab_reference"] = cuda_time(lambda: lab_reference(rd), 2, 5)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    match_colors(vd, stats, 1.0)
    torch.cuda.synchronize()
    res["gpu_extra_peak_gib"] = round((torch.cuda.max_memory_allocated() - base) / 1024**3, 3)
    log(res)
    write_json(args.out, res)


if __name__ == "__main__":
    main()
