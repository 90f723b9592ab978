"""Issue #8: cold start, from process start to a ready engine, with a consolidated DiT bundle on local disk.

    PYTHONUNBUFFERED=1 python3 bench/cold_start.py --out $OUT/cold.json --dir /root/cold --scale full --device cuda
    python bench/cold_start.py --out X.json --dir TMP --scale tiny --device cpu      # the CPU test's run

1. Writes a checkpoint folder with seeded random weights in the files the engine reads: the DiT as one
   `weights repack` bundle (bf16, the same `__metadata__`, streamed one tensor at a time so host memory stays
   bounded) plus config.json, umT5 (`.pth`, bf16), CLIP (`.pth`, float32, `visual.` keys plus a stub of the text
   tower that the loader skips), the VAE (`.pth`, float32), a wav2vec2 `save_pretrained` folder and the umT5
   tokenizer folder. `--scale full` uses the published sizes (no engine_components.json, so the engine's
   defaults apply; tokenizer at umT5's full 256,384 pieces), `--scale tiny` the tiny model's configs
   (`testkit/tiny.py`). Weights are drawn on `--device` (a GPU draws 19 B values in seconds).
2. Measures the disk's read bandwidth: every file evicted from the page cache, then the largest file is read
   once with buffered 16 MiB reads (the figure used below); `dd iflag=direct` on the second largest file is
   recorded beside it.
3. Evicts every file again (`posix_fadvise` DONTNEED per file, then `drop_caches` where permitted, which also
   drops torch's own libraries: a fully cold host; `--no-drop-caches` skips that) and records each file's
   cached fraction, then starts a fresh
   `python` (this script with `--child`) that imports torch and the engine and builds
   `Engine(layout with dit_bundle, EngineOptions(device, bf16 on cuda / float32 on cpu, sdpa))`. When the
   constructor returns (and the GPU has synchronised) the child prints one JSON line and exits.

    process_to_ready_s        = parent's wall time from just before Popen to reading the child's line
    read_time_at_bandwidth_s  = bytes_total / measured bandwidth   (bytes_total: every file written, all read)
    ratio                     = process_to_ready_s / read_time_at_bandwidth_s          target: <= 1.3

The folder given by `--dir` is deleted at the end, also on failure, unless `--keep`; `--skip-write` reuses a
folder kept by an earlier run. A marker file guards against writing into (and then deleting) a foreign folder.
"""
from __future__ import annotations

import time

_SCRIPT_T0 = time.perf_counter()  # the child's "script start", before torch is imported


def _warm_like_the_worker():
    """The child starts the worker's start-up read-ahead (EngineHolder.get) before torch is imported."""
    import sys
    from dataclasses import replace as _replace
    from pathlib import Path as _Path

    if "--child" not in sys.argv or "--no-warm" in sys.argv:
        return None
    from worker.engine.formats.layout import published_layout
    from worker.engine.formats.prefetch import warm_start

    root = _Path(sys.argv[sys.argv.index("--dir") + 1])
    layout = _replace(published_layout(root), dit_bundle=root / "bundles/infinitetalk_single_bf16.safetensors")
    return warm_start(layout.read_order())


_READ_AHEAD = _warm_like_the_worker()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

from common import GIB, host_memory, log, machine_info, write_json  # noqa: E402
from checkpoint_load import cached_fraction, dd_bandwidth, drop_caches, evict, read_bandwidth  # noqa: E402

import torch  # noqa: E402

from worker.engine.models.clip_visual import CLIPVisionConfig, CLIPVisionTower  # noqa: E402
from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT  # noqa: E402
from worker.engine.formats.layout import (  # noqa: E402
    CLIP_FILE, T5_FILE, T5_TOKENIZER_DIR, VAE_FILE, CheckpointLayout, published_layout,
)
from worker.engine.models.t5 import T5Config, UMT5Encoder, write_tiny_tokenizer  # noqa: E402
from worker.engine.models.vae import VAEConfig, WanVAEModel  # noqa: E402

MARKER = ".cold_start_bench"
BUNDLE_REL = "bundles/infinitetalk_single_bf16.safetensors"
READY_TAG = "COLD_START_READY "
TARGET_RATIO = 1.3
DTYPE_CODES = {torch.bfloat16: "BF16", torch.float32: "F32"}


# ---------------------------------------------------------------- what gets written


@dataclass(frozen=True)
class Scale:
    dit: DiTConfig
    t5: T5Config
    clip: CLIPVisionConfig
    vae: VAEConfig
    wav2vec: dict[str, Any]  # Wav2Vec2Config overrides ({}: transformers' base defaults, 12 x 768)
    write_components: Callable[[Path], None] | None  # engine_components.json writer; None: full-size defaults


def scale_spec(name: str) -> Scale:
    if name == "tiny":
        from testkit import tiny

        return Scale(tiny.TINY_DIT, tiny.TINY_T5, tiny.TINY_CLIP, tiny.TINY_VAE, tiny.TINY_WAV2VEC, tiny.write_components)
    return Scale(DiTConfig.full_size(), T5Config(), CLIPVisionConfig(), VAEConfig(), {}, None)


def layout_for(root: Path) -> CheckpointLayout:
    """The published folder names (as the tiny model uses them), the DiT read from the bundle only."""
    return replace(published_layout(root), dit_bundle=root / BUNDLE_REL)


def meta_shapes(factory: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in factory().state_dict().items()}


def draw(name: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, host: bool = True) -> torch.Tensor:
    """One seeded tensor drawn on the generator's device with `tiny.randomise`'s scales (matrices
    N(0, 1/fan_in), norm scales 1 + 0.1 N, other vectors 0.05 N), cast, returned on the CPU."""
    value = torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32)
    if len(shape) >= 2:
        fan_in = shape[-1] if name.endswith("modulation") else math.prod(shape[1:])
        value /= math.sqrt(max(fan_in, 1))
    elif "norm" in name and name.endswith(("weight", "gamma", "scale")):
        value = value.mul_(0.1).add_(1.0)
    else:
        value *= 0.05
    value = value.to(dtype)
    return value.cpu() if host else value


def fsync_path(path: Path) -> None:
    """Written bytes reach the disk inside the timed write, and eviction later finds clean pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bundle(path: Path, cfg: DiTConfig, config_text: str, gen: torch.Generator, quant: str = "none") -> None:
    """The DiT as `weights repack` writes it (bf16, its metadata; `quant` fp8: the block matrices as e4m3
    plus per-row float32 scales, as `weights repack --dtype float8_e4m3fn`), through repack's streaming
    writer, so only one tensor is ever in host memory."""
    from worker.engine.formats.bundle import SCALE_SUFFIX, bundle_metadata
    from worker.engine.formats.fp8 import quantize_rows
    from tools.weights.repack import OutTensor, is_fp8_target, write_streamed

    shapes = meta_shapes(lambda: InfiniteTalkDiT(cfg))
    plan = []
    for k, s in shapes.items():
        if quant == "fp8" and is_fp8_target(k, s, "BF16"):
            pair: dict[str, torch.Tensor] = {}

            def part(which: str, k=k, s=s, pair=pair) -> torch.Tensor:
                if not pair:  # the matrix is drawn once; its e4m3 values, then its scales, are written
                    q, scale = quantize_rows(draw(k, s, torch.float32, gen, host=False), inplace=True)
                    pair["q"], pair["s"] = q.cpu(), scale.cpu()
                return pair.pop(which)

            plan.append(OutTensor(k, "F8_E4M3", s, lambda part=part: part("q")))
            plan.append(OutTensor(k + SCALE_SUFFIX, "F32", (s[0],), lambda part=part: part("s")))
        else:
            plan.append(OutTensor(k, "BF16", s, lambda k=k, s=s: draw(k, s, torch.bfloat16, gen)))
    metadata = bundle_metadata("float8_e4m3fn" if quant == "fp8" else "bfloat16", dit_config=config_text)
    write_streamed(path, plan, metadata)


def write_pth(path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, gen: torch.Generator,
              prefix: str = "", extra: dict[str, torch.Tensor] | None = None) -> None:
    """A flat `.pth` state dict as upstream publishes them (torch.save needs it whole in host memory:
    11.4 GB for the full umT5, fine on the benchmark host)."""
    sd = {prefix + k: draw(prefix + k, s, dtype, gen) for k, s in shapes.items()}
    sd.update(extra or {})
    torch.save(sd, path)
    del sd
    fsync_path(path)


def write_wav2vec(folder: Path, overrides: dict[str, Any], seed: int) -> None:
    """transformers' own `save_pretrained` folder (config.json, model.safetensors, preprocessor_config.json)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    Wav2Vec2Model(Wav2Vec2Config(**overrides)).save_pretrained(str(folder), safe_serialization=True)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    ).save_pretrained(str(folder))
    for f in folder.iterdir():
        fsync_path(f)


def write_dit(root: Path, layout: CheckpointLayout, spec: Scale, gen: torch.Generator, quant: str = "none") -> None:
    config = asdict(spec.dit)
    config.update({"_class_name": "WanModel", "model_type": "i2v"})
    text = json.dumps(config, indent=2)
    layout.dit_config.write_text(text)
    write_bundle(layout.dit_bundle, spec.dit, text, gen, quant)


def write_checkpoint(root: Path, spec: Scale, device: str, seed: int, quant: str = "none") -> dict[str, Any]:
    """Every component, timed one by one (drawing included) and in all."""
    layout = layout_for(root)
    layout.ckpt_dir.mkdir(parents=True, exist_ok=True)
    layout.dit_bundle.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(seed)
    clip_extra = {"textual.token_embedding.weight": torch.zeros(8, 4), "log_scale": torch.tensor(4.6052)}
    steps: dict[str, Callable[[], None]] = {
        "dit": lambda: write_dit(root, layout, spec, gen, quant),
        "t5": lambda: write_pth(layout.t5_file, meta_shapes(lambda: UMT5Encoder(spec.t5)), torch.bfloat16, gen),
        "t5_tokenizer": lambda: write_tiny_tokenizer(layout.t5_tokenizer, vocab_size=spec.t5.vocab_size),
        "clip": lambda: write_pth(layout.clip_file, meta_shapes(lambda: CLIPVisionTower(spec.clip)), torch.float32,
                                  gen, prefix="visual.", extra=clip_extra),
        "vae": lambda: write_pth(layout.vae_file, meta_shapes(lambda: WanVAEModel(spec.vae)), torch.float32, gen),
        "wav2vec2": lambda: write_wav2vec(layout.wav2vec_dir, spec.wav2vec, seed + 5),
    }
    if spec.write_components is not None:
        steps["components"] = lambda: spec.write_components(layout.ckpt_dir)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    for name, step in steps.items():
        t = time.perf_counter()
        step()
        seconds[name] = round(time.perf_counter() - t, 2)
        log("wrote", name, f"{seconds[name]} s", host_memory())
    total_s = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the child needs the card, not this process's cached blocks
    total = sum(f.stat().st_size for f in checkpoint_files(root))
    return {"s": round(total_s, 2), "seconds": seconds, "bytes": total,
            "gb_per_s_incl_generation": round(total / total_s / 1e9, 3)}


def checkpoint_files(root: Path) -> list[Path]:
    """Every file the engine reads: all that was written, less the marker."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER)


def component_of(rel: str) -> str:
    """Which engine component reads a file (keys of the load report, plus the tokenizer)."""
    for prefix, name in (
        (BUNDLE_REL, "dit"),
        (f"Wan2.1-I2V-14B-480P/{T5_TOKENIZER_DIR}/", "t5_tokenizer"),
        (f"Wan2.1-I2V-14B-480P/{T5_FILE}", "t5"),
        (f"Wan2.1-I2V-14B-480P/{CLIP_FILE}", "clip"),
        (f"Wan2.1-I2V-14B-480P/{VAE_FILE}", "vae"),
        ("Wan2.1-I2V-14B-480P/config.json", "dit"),
        ("chinese-wav2vec2-base/", "wav2vec2"),
    ):
        if rel.startswith(prefix):
            return name
    return "other"


def file_table(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in checkpoint_files(root)}


# ---------------------------------------------------------------- page cache and disk


def evict_files(root: Path, files: list[Path], drop_all: bool = True) -> dict[str, Any]:
    """Every file out of the page cache; the cached fraction of each afterwards, keyed by relative path.
    `drop_all` also empties the whole page cache (root only): torch's libraries load cold too."""
    for f in files:
        evict(f)
    dropped = drop_caches() if drop_all else False
    return {
        "drop_caches": dropped,
        "cached_fraction": {str(f.relative_to(root)): round(cached_fraction(f), 4) for f in files},
    }


def measure_bandwidth(root: Path, files: list[Path], drop_all: bool) -> dict[str, Any]:
    """Cold buffered read of the largest file (the figure used), O_DIRECT dd of the next largest."""
    by_size = sorted(files, key=lambda f: f.stat().st_size, reverse=True)
    out: dict[str, Any] = {"evict": evict_files(root, files, drop_all)}
    biggest = by_size[0]
    out["cached_fraction_before_read"] = round(cached_fraction(biggest), 4)
    out["buffered_cold"] = read_bandwidth(biggest)
    log("disk read", out["buffered_cold"])
    if len(by_size) > 1 and shutil.which("dd"):
        dd = dd_bandwidth(by_size[1])
        dd["file"] = str(by_size[1].relative_to(root))
        if dd["rc"] != 0:  # e.g. tmpfs has no O_DIRECT: no figure rather than a wrong one
            dd["gb_per_s"] = None
        out["dd_direct"] = dd
        log("dd direct", dd)
    out["gb_per_s"] = out["buffered_cold"]["gb_per_s"]
    return out


# ---------------------------------------------------------------- the cold start (child side)


def process_age_s() -> float | None:
    """Seconds since this process was forked (from /proc, 10 ms resolution): counts interpreter start-up too."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return round(time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def run_child(root: Path, device: str, dtype: str, quant: str = "none") -> None:
    """Import the engine, build it, print one JSON line the moment it is ready."""
    imported_torch_s = time.perf_counter() - _SCRIPT_T0
    from worker.engine.runtime import Engine, EngineOptions

    imports_s = time.perf_counter() - _SCRIPT_T0
    t = time.perf_counter()
    profiler = None
    if os.environ.get("COLD_START_PROFILE") == "1":  # where the constructor's time goes (slows it a little)
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    engine = Engine(layout_for(root), EngineOptions(device=device, dtype=dtype, attention="sdpa", quant=quant))
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(30)
        print(buf.getvalue()[-6000:], file=sys.stderr, flush=True)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    engine_s = time.perf_counter() - t
    ready = {
        "ready_s_since_child_start": process_age_s(),
        "ready_s_since_script_start": round(time.perf_counter() - _SCRIPT_T0, 3),
        "import_torch_s": round(imported_torch_s, 3),
        "imports_s": round(imports_s, 3),
        "engine_init_s": round(engine_s, 3),
        "read_ahead": None if _READ_AHEAD is None else {"files": len(_READ_AHEAD.files),
                                                        "bytes_read": _READ_AHEAD.bytes_read},
        "load_report": asdict(engine.report),
        "attention_backend": str(engine.attention_backend),
        "transformers_imported": "transformers" in sys.modules,  # the engine's start path no longer needs it
        "sympy_imported": "sympy" in sys.modules,  # torch.fx's symbolic shapes pull it in: seconds when cold
        "dit_params": sum(p.numel() for p in engine.dit.parameters()),
        "dit_dtype": str(next(engine.dit.parameters()).dtype).removeprefix("torch."),
        "dit_fp8_linears": sum(type(m).__name__ == "FP8Linear" for m in engine.dit.modules()),
        "dit_device": str(next(engine.dit.parameters()).device),
        "peak_rss_gib": host_memory()["vm_hwm_gib"],
        "host_memory": host_memory(),
        "gpu_allocated_gib": round(torch.cuda.memory_allocated() / GIB, 3) if engine.device.type == "cuda" else 0.0,
    }
    print(READY_TAG + json.dumps(ready), flush=True)


def run_pth_probe(path: Path, mode: str) -> None:
    """One `.pth` onto the GPU the loader's way (memory-mapped `torch.load`, tensor by tensor), with the copy
    made `direct` (mapped pages straight to `.to("cuda")`, as the loader does), after a `clone` into
    anonymous memory, or `direct` with the prefetch thread running: which part of the loader is slow."""
    from worker.engine.formats.prefetch import Prefetcher

    t0 = time.perf_counter()
    pre = Prefetcher([path]) if mode == "prefetch" else None
    sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    out = {}
    for k, v in sd.items():
        out[k] = (v.clone() if mode == "clone" else v).to("cuda")
    torch.cuda.synchronize()
    if pre is not None:
        pre.stop()
    nbytes = sum(v.numel() * v.element_size() for v in out.values())
    print(READY_TAG + json.dumps({"mode": mode, "s": round(time.perf_counter() - t0, 3), "bytes": nbytes,
                                  "gb_per_s": round(nbytes / (time.perf_counter() - t0) / 1e9, 3)}), flush=True)


def pth_probe(root: Path, files: list[Path], drop_all: bool) -> dict[str, Any]:
    """The largest `.pth` loaded cold in a fresh process per mode (see `run_pth_probe`)."""
    pth = max((f for f in files if f.suffix == ".pth"), key=lambda f: f.stat().st_size)
    res: dict[str, Any] = {"file": str(pth.relative_to(root))}
    for mode in ("direct", "clone", "prefetch"):
        evict_files(root, files, drop_all)
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", mode, "--dir", str(pth)],
                              capture_output=True, text=True, timeout=300)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(READY_TAG)), None)
        res[mode] = json.loads(line[len(READY_TAG):]) if line else {"error": proc.stderr[-1500:]}
        log("pth probe", mode, res[mode])
    return res


# ---------------------------------------------------------------- the cold start (parent side)


def _pump(stream, lines: queue.Queue) -> None:
    """Stamp each line of the child's stdout the moment it arrives."""
    for line in stream:
        lines.put((time.perf_counter(), line))
    lines.put((time.perf_counter(), None))


def cold_start(root: Path, device: str, dtype: str, timeout_s: float, quant: str = "none",
               no_warm: bool = False) -> dict[str, Any]:
    """Fresh interpreter, timed from just before Popen to the ready line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--dir", str(root),
           "--device", device, "--dtype", dtype, "--quant", quant, *(["--no-warm"] if no_warm else [])]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    lines: queue.Queue = queue.Queue()
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        ready, t_ready, other = None, None, []
        deadline = t0 + timeout_s
        while ready is None:
            try:
                stamp, line = lines.get(timeout=max(deadline - time.perf_counter(), 0.01))
            except queue.Empty:
                proc.kill()
                break
            if line is None:
                break
            if line.startswith(READY_TAG):
                ready, t_ready = json.loads(line[len(READY_TAG):]), stamp
            else:
                other.append(line.rstrip())
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        exit_s = time.perf_counter() - t0
        err.seek(0)
        stderr_tail = err.read().decode(errors="replace")[-6000:]
    out: dict[str, Any] = {"cmd": " ".join(cmd), "rc": rc, "process_exit_s": round(exit_s, 3)}
    if ready is None:
        out.update(error="the child never reported ready", stdout_tail=other[-20:], stderr_tail=stderr_tail)
        return out
    out.update(process_to_ready_s=round(t_ready - t0, 3), child=ready)
    if os.environ.get("COLD_START_PROFILE") == "1":
        out["profile"] = stderr_tail
    return out


# ---------------------------------------------------------------- result


def summarise(result: dict[str, Any]) -> None:
    """bytes_total, read time at the measured bandwidth, the ratio and per-component figures."""
    files = result["files"]
    result["bytes_total"] = sum(files.values())
    by_comp: dict[str, int] = {}
    for rel, size in files.items():
        by_comp[component_of(rel)] = by_comp.get(component_of(rel), 0) + size
    result["bytes_by_component"] = by_comp
    read_s = result["bytes_total"] / (result["bandwidth"]["gb_per_s"] * 1e9)
    result["read_time_at_bandwidth_s"] = round(read_s, 4)
    cs = result["cold_start"]
    if "process_to_ready_s" not in cs:
        return
    result["process_to_ready_s"] = cs["process_to_ready_s"]
    result["ratio"] = round(cs["process_to_ready_s"] / read_s, 3)
    result["target_ratio"] = TARGET_RATIO
    result["target_met"] = result["ratio"] <= TARGET_RATIO
    before = result.get("cold_start_no_warm", {})
    if "process_to_ready_s" in before:
        result["ratio_no_warm"] = round(before["process_to_ready_s"] / read_s, 3)
    loads = cs["child"]["load_report"]["seconds"]
    comps = {}
    for name, s in loads.items():
        n = by_comp.get(name, 0) + (by_comp.get("t5_tokenizer", 0) if name == "t5" else 0)
        comps[name] = {"load_s": s, "bytes": n, "gb_per_s": round(n / s / 1e9, 3) if s > 0 else None}
    result["components"] = comps


def print_table(result: dict[str, Any]) -> None:
    cs = result.get("cold_start", {})
    print()
    if "write" in result:
        w = result["write"]
        print(f"write: {w['bytes'] / 1e9:.2f} GB in {w['s']} s ({w['gb_per_s_incl_generation']} GB/s, drawing included)")
    bw = result.get("bandwidth", {})
    if bw:
        dd = bw.get("dd_direct", {}).get("gb_per_s")
        print(f"disk: buffered cold {bw['gb_per_s']} GB/s (dd O_DIRECT {dd} GB/s)")
    if "process_to_ready_s" not in cs:
        print("cold start FAILED:", result.get("error") or cs.get("error"), cs.get("stderr_tail", "")[-1500:])
        return
    child = cs["child"]
    print(f"{'component':12s} {'GB':>8s} {'load s':>8s} {'GB/s':>7s}")
    for name, c in result["components"].items():
        print(f"{name:12s} {c['bytes'] / 1e9:8.3f} {c['load_s']:8.2f} {c['gb_per_s']!s:>7s}")
    print(f"imports {child['imports_s']} s, engine constructor {child['engine_init_s']} s, "
          f"peak RSS {child['peak_rss_gib']} GiB, GPU {child['gpu_allocated_gib']} GiB")
    print(f"process to ready {result['process_to_ready_s']} s; {result['bytes_total'] / 1e9:.2f} GB at "
          f"{bw['gb_per_s']} GB/s = {result['read_time_at_bandwidth_s']} s; ratio {result['ratio']} "
          f"(target <= {TARGET_RATIO}: {'met' if result['target_met'] else 'NOT met'})")


# ---------------------------------------------------------------- main


def prepare_root(root: Path, skip_write: bool) -> None:
    """Only a folder this benchmark made is ever written into or deleted."""
    if skip_write:
        if not (root / MARKER).is_file():
            raise SystemExit(f"--skip-write: {root} holds no checkpoint written by this benchmark")
        return
    if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise SystemExit(f"{root} is not empty and was not written by this benchmark; refusing to use it")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by bench/cold_start.py; deleted with the folder\n")


def needed_bytes(spec: Scale) -> int:
    """A lower bound of what the write takes on disk (the DiT and umT5 in bf16, CLIP and VAE in float32)."""
    def count(factory):
        return sum(math.prod(s) for s in meta_shapes(factory).values())

    return (2 * count(lambda: InfiniteTalkDiT(spec.dit)) + 2 * count(lambda: UMT5Encoder(spec.t5))
            + 4 * count(lambda: CLIPVisionTower(spec.clip)) + 4 * count(lambda: WanVAEModel(spec.vae)))


def run(args: argparse.Namespace, result: dict[str, Any], save: Callable[[], None]) -> None:
    root = Path(args.dir)
    spec = scale_spec(args.scale)
    prepare_root(root, args.skip_write)
    du = shutil.disk_usage(root)
    result["disk_before"] = {"total_gib": round(du.total / GIB, 1), "free_gib": round(du.free / GIB, 1)}
    if not args.skip_write:
        need = needed_bytes(spec)
        if du.free < need * 1.02:
            raise SystemExit(f"{root}: {du.free / 1e9:.1f} GB free, the checkpoint needs about {need / 1e9:.1f} GB")
        result["write"] = write_checkpoint(root, spec, args.device, args.seed, args.quant)
        log("write", result["write"])
        save()
    files = checkpoint_files(root)
    result["files"] = file_table(root)
    result["bandwidth"] = measure_bandwidth(root, files, not args.no_drop_caches)
    save()
    result["evict_before_start"] = evict_files(root, files, not args.no_drop_caches)
    log("cold start", {"drop_caches": result["evict_before_start"]["drop_caches"],
                       "max_cached_fraction": max(result["evict_before_start"]["cached_fraction"].values())})
    if args.compare_warm:  # first without the start-up read-ahead, then (the primary figure) with it
        result["cold_start_no_warm"] = cold_start(root, args.device, args.dtype, args.child_timeout, args.quant,
                                                  no_warm=True)
        log("ready without read-ahead", {k: v for k, v in result["cold_start_no_warm"].items() if k != "child"})
        save()
        result["evict_before_second_start"] = evict_files(root, files, not args.no_drop_caches)
    result["cold_start"] = cold_start(root, args.device, args.dtype, args.child_timeout, args.quant,
                                      no_warm=args.no_warm)
    log("ready", {k: v for k, v in result["cold_start"].items() if k != "child"})
    summarise(result)
    if args.pth_probe:
        save()
        result["pth_probe"] = pth_probe(root, files, not args.no_drop_caches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--dir", default="/tmp/infinitetalk-cold-start")
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="engine dtype (default: bfloat16 on cuda, float32 on cpu)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quant", choices=["none", "fp8"], default="none",
                    help="fp8: the DiT bundle's block matrices in e4m3 (as `weights repack --dtype float8_e4m3fn`), "
                         "loaded as fp8 (EngineOptions.quant)")
    ap.add_argument("--skip-write", action="store_true", help="reuse the checkpoint a --keep run left in --dir")
    ap.add_argument("--keep", action="store_true", help="keep --dir afterwards")
    ap.add_argument("--no-drop-caches", action="store_true",
                    help="evict only the checkpoint's files, not the whole page cache (for shared test machines)")
    ap.add_argument("--child-timeout", type=float, default=400.0, help="seconds the child may take to get ready")
    ap.add_argument("--pth-probe", action="store_true", help="afterwards, load the largest .pth cold three ways")
    ap.add_argument("--no-warm", action="store_true",
                    help="the child skips the worker's start-up read-ahead (to measure what it gains)")
    ap.add_argument("--compare-warm", action="store_true",
                    help="two cold starts: without the read-ahead, then with it (the reported ratio)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.probe:
        run_pth_probe(Path(args.dir), args.probe)
        return
    if args.child:
        run_child(Path(args.dir), args.device, args.dtype, args.quant)
        return
    if not args.out:
        ap.error("--out is required")

    result: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    save = lambda: write_json(args.out, result)  # noqa: E731
    root = Path(args.dir)
    failed = True
    try:
        run(args, result, save)
        failed = "process_to_ready_s" not in result
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if not args.keep and (root / MARKER).is_file():
            shutil.rmtree(root, ignore_errors=True)
            result["removed_dir"] = not root.exists()
        save()
        print_table(result)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
