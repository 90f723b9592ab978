"""Small helpers shared by the GPU benchmarks: machine facts, host memory readings, CUDA-event timing.

The benchmarks run standalone on the device machine (`python bench/<name>.py --out $OUT/x.json`), so this
module only needs torch and the repository root on `sys.path`.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

GIB = 1024**3


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / GIB, 2),
            sms=p.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    try:
        info["mem_total_gib"] = round(int(_proc_status("/proc/meminfo")["MemTotal"].split()[0]) * 1024 / GIB, 1)
    except (OSError, KeyError, ValueError):
        pass
    return info


def _proc_status(path: str = "/proc/self/status") -> dict[str, str]:
    out = {}
    with open(path) as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def host_memory() -> dict[str, float]:
    """Current RSS split into anonymous and file-backed pages (GiB), and the peak RSS ru_maxrss (GiB)."""
    status = _proc_status()

    def kib(key: str) -> float:
        try:
            return round(int(status[key].split()[0]) / 1024**2, 3)
        except (KeyError, ValueError):
            return float("nan")

    return {
        "rss_gib": kib("VmRSS"),
        "rss_anon_gib": kib("RssAnon"),
        "rss_file_gib": kib("RssFile"),
        "vm_hwm_gib": kib("VmHWM"),
        "ru_maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    }


def cuda_time(fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, Any]:
    """Wall time of `fn` on the GPU in seconds, measured with CUDA events after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "times_s": [round(t, 4) for t in times],
    }


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.t0, 3)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def log(*parts: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)
