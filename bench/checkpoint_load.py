"""Cold and warm load of a full-size original-layout InfiniteTalk DiT checkpoint onto the GPU.

Writes random weights in the published file formats (7 `diffusion_pytorch_model-0000N-of-00007.safetensors`
shards + their index json + `config.json`, and `infinitetalk.safetensors` holding the adapter keys),
evicts them from the page cache, measures the disk's read bandwidth, then loads the merged DiT with
`worker.engine.formats.loaders.load_module` (bf16 target, on the GPU) in a fresh process, timing it and sampling
host RSS (anonymous and file-backed) and ru_maxrss.

    PYTHONUNBUFFERED=1 python bench/checkpoint_load.py --dir /tmp/ckpt --out $OUT/load.json

The published shards are float32 (about 66 GB, 75 GB with the adapter). `--shard-dtype auto` writes
float32 when the disk has room and bfloat16 otherwise; the result records which. `--fp32-probe` then also
writes one float32 shard (the first shard's keys) and times the loader's per-tensor read + GPU conversion
on it, so the float32 path is measured even where the whole float32 checkpoint does not fit.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common import GIB, host_memory, log, machine_info, write_json

import torch

from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT
from worker.engine.formats.layout import DIT_CONFIG, DIT_SHARD_COUNT, CheckpointLayout, dit_shard_names, is_adapter_key

INDEX = "diffusion_pytorch_model.safetensors.index.json"
ADAPTER = "infinitetalk.safetensors"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- page cache helpers


def evict(path: Path) -> None:
    """Drop a file's clean pages from the page cache (works without root)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def cached_fraction(path: Path) -> float:
    """Share of the file's pages resident in the page cache (mincore)."""
    size = path.stat().st_size
    if size == 0:
        return 0.0
    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    pages = (size + page - 1) // page
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            buf = (ctypes.c_char * size).from_buffer(mm)
            vec = (ctypes.c_ubyte * pages)()
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec)
            del buf
            if rc != 0:
                return float("nan")
            return sum(v & 1 for v in vec) / pages
        finally:
            mm.close()


def evict_all(files: list[Path]) -> dict[str, Any]:
    for f in files:
        evict(f)
    dropped = drop_caches()
    return {"drop_caches": dropped, "cached_fraction_after": {f.name: round(cached_fraction(f), 4) for f in files}}


def read_bandwidth(path: Path, chunk: int = 16 << 20) -> dict[str, Any]:
    """Sequential buffered read of a (cold) file into one reused buffer: the disk's read rate as Python sees it."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(view)
            if not n:
                break
            total += n
    dt = time.perf_counter() - t0
    return {"file": path.name, "bytes": total, "s": round(dt, 3), "gb_per_s": round(total / dt / 1e9, 3)}


def dd_bandwidth(path: Path) -> dict[str, Any]:
    """`dd` with O_DIRECT (bypasses the page cache, so no eviction is needed)."""
    cmd = ["dd", f"if={path}", "of=/dev/null", "bs=16M", "iflag=direct"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    size = path.stat().st_size
    return {
        "cmd": " ".join(cmd),
        "rc": proc.returncode,
        "s": round(dt, 3),
        "gb_per_s": round(size / dt / 1e9, 3),
        "dd_says": proc.stderr.strip().splitlines()[-1:] if proc.stderr else [],
    }


# ---------------------------------------------------------------- writing


def random_like(name: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Random values drawn on the GPU (fast) with the scales of `init_weights`; returned on the CPU."""
    draw = torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32)
    if name.endswith("modulation"):
        draw /= math.sqrt(shape[-1])
    elif len(shape) >= 2:
        draw /= math.sqrt(math.prod(shape[1:]))
    elif name.endswith("weight"):
        draw = 1 + 0.1 * draw
    else:
        draw *= 0.05
    return draw.to(dtype).cpu()


def shard_plan(shapes: dict[str, tuple[int, ...]], n: int) -> list[list[str]]:
    """Contiguous groups of keys (state-dict order) of roughly equal size, as the published shards are."""
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    target = sum(sizes.values()) / n
    groups: list[list[str]] = [[]]
    acc = 0
    for k in shapes:
        if acc >= target * len(groups) and len(groups) < n:
            groups.append([])
        groups[-1].append(k)
        acc += sizes[k]
    return groups


def write_checkpoint(ckpt: Path, dtype: torch.dtype, seed: int) -> dict[str, Any]:
    from safetensors.torch import save_file

    ckpt.mkdir(parents=True, exist_ok=True)
    cfg = DiTConfig.full_size()
    with torch.device("meta"):
        sd = InfiniteTalkDiT(cfg).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    base = {k: s for k, s in shapes.items() if not is_adapter_key(k)}
    adapter = {k: s for k, s in shapes.items() if is_adapter_key(k)}
    gen = torch.Generator(device="cuda").manual_seed(seed)
    elem = torch.tensor([], dtype=dtype).element_size()
    weight_map: dict[str, str] = {}
    files = []
    t0 = time.perf_counter()
    for name, keys in zip(dit_shard_names(DIT_SHARD_COUNT), shard_plan(base, DIT_SHARD_COUNT)):
        part = {k: random_like(k, base[k], dtype, gen) for k in keys}
        save_file(part, str(ckpt / name), metadata={"format": "pt"})
        del part
        weight_map.update({k: name for k in keys})
        files.append(ckpt / name)
        log("wrote", name, f"{(ckpt / name).stat().st_size / 1e9:.2f} GB", host_memory())
    (ckpt / INDEX).write_text(
        json.dumps({"metadata": {"total_size": sum(math.prod(s) * elem for s in base.values())}, "weight_map": weight_map})
    )
    config = asdict(cfg)
    config.update({"_class_name": "WanModel", "model_type": "i2v"})
    (ckpt / DIT_CONFIG).write_text(json.dumps(config, indent=2))
    part = {k: random_like(k, adapter[k], dtype, gen) for k in adapter}
    save_file(part, str(ckpt / ADAPTER), metadata={"format": "pt"})
    del part
    files.append(ckpt / ADAPTER)
    write_s = time.perf_counter() - t0
    total = sum(f.stat().st_size for f in files)
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "files": {f.name: f.stat().st_size for f in files},
        "total_bytes": total,
        "write_s": round(write_s, 1),
        "write_gb_per_s_incl_generation": round(total / write_s / 1e9, 3),
    }


def write_fp32_probe(ckpt: Path, probe: Path, seed: int) -> dict[str, Any]:
    """One float32 shard holding the keys of the first shard of `ckpt`."""
    from safetensors.torch import save_file

    weight_map = json.loads((ckpt / INDEX).read_text())["weight_map"]
    first = dit_shard_names(DIT_SHARD_COUNT)[0]
    with torch.device("meta"):
        sd = InfiniteTalkDiT(DiTConfig.full_size()).state_dict()
    gen = torch.Generator(device="cuda").manual_seed(seed)
    part = {k: random_like(k, tuple(sd[k].shape), torch.float32, gen) for k, v in weight_map.items() if v == first}
    save_file(part, str(probe), metadata={"format": "pt"})
    return {"file": probe.name, "bytes": probe.stat().st_size, "tensors": len(part)}


# ---------------------------------------------------------------- loading (runs in a fresh process)


class RssSampler(threading.Thread):
    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.peak = {"rss_gib": 0.0, "rss_anon_gib": 0.0, "rss_file_gib": 0.0}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            m = host_memory()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], m[k])
            time.sleep(self.period)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        return self.peak


def load_child(ckpt: Path, out: Path, label: str) -> None:
    from worker.engine.formats.loaders import load_module

    import_mem = host_memory()
    cfg = DiTConfig.from_json(ckpt / DIT_CONFIG)
    layout = CheckpointLayout(ckpt_dir=ckpt, infinitetalk_file=ckpt / ADAPTER, wav2vec_dir=ckpt)
    files = layout.dit_files
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # CUDA context outside the timed region
    base_mem = host_memory()
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = InfiniteTalkDiT(cfg)
    load_module(model, files, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    peak = sampler.stop()
    end_mem = host_memory()
    total = sum(f.stat().st_size for f in files)
    # Spot check: one loaded tensor equals the file's (cast to bf16).
    from safetensors import safe_open

    key = "blocks.0.self_attn.q.weight"
    with safe_open(str(layout.dit_files[0]), framework="pt") as fh:
        ok = key not in fh.keys() or bool(
            torch.equal(fh.get_tensor(key).to(torch.bfloat16).cuda(), model.state_dict()[key])
        )
    result = {
        "label": label,
        "files": [f.name for f in files],
        "bytes_read": total,
        "load_s": round(load_s, 2),
        "gb_per_s": round(total / load_s / 1e9, 3),
        "params": sum(p.numel() for p in model.parameters()),
        "gpu_memory_allocated_gib": round(torch.cuda.memory_allocated() / GIB, 2),
        "gpu_peak_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "host_after_import": import_mem,
        "host_before_load": base_mem,
        "host_peak_sampled": peak,
        "host_after_load": end_mem,
        "spot_check_equal": ok,
        "all_bf16": all(p.dtype == torch.bfloat16 for p in model.parameters()),
        "on_cuda": all(p.device.type == "cuda" for p in model.parameters()),
    }
    write_json(out, result)


def probe_child(probe: Path, out: Path) -> None:
    """The loader's inner loop (lazy read, per-tensor `.to(cuda, bf16)`) over one float32 shard."""
    from worker.engine.formats.loaders import CheckpointReader

    torch.zeros(1, device="cuda")
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    kept = []
    with CheckpointReader([probe]) as reader:
        for key in reader.keys():
            kept.append(reader.get(key).to(device="cuda", dtype=torch.bfloat16))
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    size = probe.stat().st_size
    write_json(
        out,
        {
            "file": probe.name,
            "bytes": size,
            "s": round(dt, 2),
            "gb_per_s": round(size / dt / 1e9, 3),
            "host_peak_sampled": sampler.stop(),
            "host_after": host_memory(),
        },
    )


def spawn(args: list[str], out: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--child-out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "rc": proc.returncode}
    res = json.loads(out.read_text())
    res["process_wall_s"] = round(wall, 2)
    return res


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--dir", default="/tmp/infinitetalk-ckpt")
    ap.add_argument("--shard-dtype", choices=["auto", "fp32", "bf16"], default="auto")
    ap.add_argument("--fp32-probe", action="store_true")
    ap.add_argument("--skip-write", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["load", "probe"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--label", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    ckpt = Path(args.dir)

    if args.child == "load":
        load_child(ckpt, Path(args.child_out), args.label)
        return
    if args.child == "probe":
        probe_child(ckpt / "fp32_probe.safetensors", Path(args.child_out))
        return
    if not args.out:
        ap.error("--out is required")

    result: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    save = lambda: write_json(args.out, result)  # noqa: E731
    ckpt.mkdir(parents=True, exist_ok=True)
    du = shutil.disk_usage(ckpt)
    result["disk_before"] = {"total_gib": round(du.total / GIB, 1), "free_gib": round(du.free / GIB, 1)}
    log("disk", result["disk_before"])

    fp32_bytes = 18_882_046_784 * 4  # full DiT + adapter (16.39e9 + 2.49e9 parameters)
    dtype = args.shard_dtype
    if dtype == "auto":
        dtype = "fp32" if du.free > fp32_bytes * 1.05 else "bf16"
    result["shard_dtype"] = dtype
    result["shard_dtype_reason"] = (
        f"free {du.free / 1e9:.1f} GB vs {fp32_bytes / 1e9:.1f} GB needed for float32" if args.shard_dtype == "auto" else "forced"
    )
    if not args.skip_write:
        result["write"] = write_checkpoint(ckpt, DTYPES[dtype], args.seed)
        log("write", {k: v for k, v in result["write"].items() if k != "files"})
        save()
    files = [*(ckpt / n for n in dit_shard_names(DIT_SHARD_COUNT)), ckpt / ADAPTER]

    if args.fp32_probe:
        free = shutil.disk_usage(ckpt).free
        if free > 10.5e9:
            result["fp32_probe_write"] = write_fp32_probe(ckpt, ckpt / "fp32_probe.safetensors", args.seed + 1)
        else:
            result["fp32_probe_write"] = {"skipped": f"only {free / 1e9:.1f} GB free"}
        save()

    # Disk bandwidth: O_DIRECT dd of one shard, then a buffered read of another one after eviction.
    result["evict_1"] = evict_all(files)
    result["disk_read"] = {"dd_direct": dd_bandwidth(files[1]), "python_buffered_cold": read_bandwidth(files[2])}
    log("disk read", result["disk_read"])
    save()

    # Cold load: nothing of the checkpoint in the page cache, fresh process.
    result["evict_2"] = evict_all(files)
    out_dir = Path(args.out).parent
    result["load_cold"] = spawn(["--dir", str(ckpt), "--child", "load", "--label", "cold"], out_dir / "load_cold_child.json")
    log("cold load", result["load_cold"])
    save()
    # Warm load: the files are now in the page cache (the warm path of a second start on the same host).
    result["page_cache_after_cold"] = {f.name: round(cached_fraction(f), 3) for f in files}
    result["load_warm"] = spawn(["--dir", str(ckpt), "--child", "load", "--label", "warm"], out_dir / "load_warm_child.json")
    log("warm load", result["load_warm"])
    save()

    probe = ckpt / "fp32_probe.safetensors"
    if args.fp32_probe and probe.is_file():
        result["fp32_probe_evict"] = evict_all([probe])
        result["fp32_probe_cold"] = spawn(["--dir", str(ckpt), "--child", "probe"], out_dir / "probe_child.json")
        log("fp32 probe", result["fp32_probe_cold"])
        save()

    if not args.keep:
        shutil.rmtree(ckpt, ignore_errors=True)

    def line(label: str, rec: dict[str, Any]) -> None:
        if "error" in rec:
            print(f"{label:22s} ERROR {rec['error'][-300:]}")
            return
        pk = rec.get("host_peak_sampled", {})
        print(
            f"{label:22s} {rec.get('load_s', rec.get('s'))!s:>8} s {rec.get('gb_per_s')!s:>7} GB/s  "
            f"peak RSS {pk.get('rss_gib')} GiB (anon {pk.get('rss_anon_gib')}, file {pk.get('rss_file_gib')})  "
            f"ru_maxrss {rec.get('host_after_load', rec.get('host_after', {})).get('ru_maxrss_gib')} GiB"
        )

    print(f"\nshards {dtype} ({result['shard_dtype_reason']}); disk {result['disk_before']}")
    print("disk read:", json.dumps(result["disk_read"]))
    line("load cold", result["load_cold"])
    line("load warm", result["load_warm"])
    if "fp32_probe_cold" in result:
        line("fp32 shard probe cold", result["fp32_probe_cold"])
    save()


if __name__ == "__main__":
    main()
