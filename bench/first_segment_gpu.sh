#!/usr/bin/env bash
# Issue #17 on the GPU in one device call: write a full-size checkpoint of random weights (bench/cold_start.py's
# writer, the DiT as one bf16 bundle), then time job start -> first chunk -> first preview segment through
# worker.job.run_job (bench/first_segment.py's `measure`) with the H200 tier's defaults at `turbo` 480p, RUNS
# jobs in one process on one warm engine (the first compiles the DiT, the later ones are a warm worker's).
# JSON and logs go to $OUT. Run from the repository root (a snapshot of it) on the GPU machine:
#
#   bash bench/first_segment_gpu.sh                              # full size, cuda, h200_141, 2 runs
#   SCALE=tiny DEVICE=cpu GPU_TIER=cpu bash bench/first_segment_gpu.sh    # the same steps on a CPU, tiny model
#
# Packages the device lacks (the worker's own deps: pydantic, hydra-core, av, soundfile, ...) come as wheels in
# WHL_DIR and/or unpacked wheels in the tarball WHL_TAR (xz; av and fa3-fwd, which are too large as wheels for
# the 64 MiB carry). The turbo preset's distill LoRA is recorded as merged into the bundle (as `weights repack
# --lora` writes it), so no LoRA file is read: the weights are random either way.
set -uo pipefail
OUT=${OUT:-/tmp/first-segment-out}
mkdir -p "$OUT"
SCALE=${SCALE:-full}
DEVICE=${DEVICE:-cuda}
GPU_TIER=${GPU_TIER:-h200_141}
QUANT=${QUANT:-fp8}   # fp8: the DiT bundle in e4m3 (19 GB, the H100/H200 tiers' fastest defaults); none: bf16 (38 GB)
if [ "$QUANT" = fp8 ]; then MODEL=${MODEL:-infinitetalk_single_fp8}; else MODEL=${MODEL:-infinitetalk_single}; fi
CKPT=${CKPT:-/root/first-segment-ckpt}
AUDIO_S=${AUDIO_S:-9}   # 3 chunks at 25 fps (81 + 72 + 72 frames)
RUNS=${RUNS:-2}
DEADLINE_S=${DEADLINE_S:-480}   # the whole script; a later run starts only if the last one would still fit
WHL_DIR=${WHL_DIR:-}
WHL_TAR=${WHL_TAR:-}
T0=$(date +%s)

if [ -n "$WHL_DIR" ] || [ -n "$WHL_TAR" ]; then
  mkdir -p /tmp/site
  if [ -n "$WHL_DIR" ] && compgen -G "$WHL_DIR/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WHL_DIR"/*.whl || { echo "wheel install failed" | tee "$OUT/error.txt"; exit 1; }
  fi
  if [ -n "$WHL_TAR" ]; then  # folders of unpacked wheels: their contents go into the same site folder
    mkdir -p /tmp/whl-unpacked && tar -xJf "$WHL_TAR" -C /tmp/whl-unpacked \
      && for d in /tmp/whl-unpacked/*/; do cp -a "$d". /tmp/site/; done \
      || { echo "unpacking $WHL_TAR failed" | tee "$OUT/error.txt"; exit 1; }
  fi
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD:$PWD/bench
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{ date -u; echo "commit ${SNAP_COMMIT:-unknown}"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -2; nproc; \
  $PY -c 'import torch, av, pydantic, hydra; print("torch", torch.__version__, "cuda", torch.version.cuda, "av", av.__version__, "pydantic", pydantic.__version__)'; \
  $PY -c 'import fa3_fwd_interface as f; print("fa3_fwd_interface", f.__file__)' 2>&1 | tail -1; df -h /root 2>&1 | tail -1; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 1. the checkpoint (skipped when CKPT already holds one, e.g. a second call on a warm machine)
if [ ! -f "$CKPT/.first_segment_ckpt" ]; then
  timeout 300 $PY - "$CKPT" "$SCALE" "$DEVICE" "$QUANT" <<'EOF' 2>&1 | tee "$OUT/write.log"
import json, sys
from pathlib import Path
import cold_start as cs
import tools.weights.repack as rp

root, scale, device, quant = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
LORA = "lightx2v_I2V_14B_480p_cfg_step_distill_rank128_bf16.safetensors"  # conf/sampler/turbo.yaml's lora_file
write = rp.write_streamed
rp.write_streamed = lambda path, plan, meta: write(path, plan, dict(meta, loras=json.dumps([{"file": LORA, "strength": 1.0}])))
root.mkdir(parents=True, exist_ok=True)
res = cs.write_checkpoint(root, cs.scale_spec(scale), device, 0, quant)
(root / ".first_segment_ckpt").write_text(json.dumps(res))
print("WRITE", json.dumps(res))
EOF
  [ -f "$CKPT/.first_segment_ckpt" ] || { echo "checkpoint write failed" | tee -a "$OUT/error.txt"; exit 1; }
fi

# 2. the jobs, one process, one engine
LEFT=$(( DEADLINE_S - ($(date +%s) - T0) ))
echo "writing done after $(( $(date +%s) - T0 )) s; $LEFT s left for the jobs"
timeout "$LEFT" $PY - "$CKPT" "$MODEL" "$GPU_TIER" "$AUDIO_S" "$RUNS" "$OUT/first_segment.json" "$LEFT" <<'EOF' 2>&1 | tee "$OUT/first_segment.log"
import argparse, itertools, json, os, sys, tempfile, time
from pathlib import Path

T0 = time.perf_counter()
ckpt, model, tier, audio_s, runs, out, left = sys.argv[1:8]
import first_segment as fs
import worker.job as wj
from worker.config import compose_config
from worker.wiring import process_env

c = Path(ckpt)
overrides = [f"model={model}", f"gpu={tier}", "sampler=turbo",
             f"model.ckpt_dir={c / 'Wan2.1-I2V-14B-480P'}",
             f"model.infinitetalk_file={c / 'InfiniteTalk/single/infinitetalk.safetensors'}",
             f"model.wav2vec_dir={c / 'chinese-wav2vec2-base'}",
             f"model.dit_bundle={c / 'bundles/infinitetalk_single_bf16.safetensors'}"]  # cold_start.BUNDLE_REL (fp8 too)
os.environ.update(process_env(compose_config(overrides)))  # as the worker does before torch starts

# One JobContext (so one engine, compiled once) for every run, and a fresh job id per run.
create, run_job, ids, holder = wj.JobContext.create, wj.run_job, itertools.count(), {}
wj.JobContext.create = staticmethod(lambda cfg, **kw: holder.setdefault("ctx", create(cfg, **kw)))
wj.run_job = lambda job_id, job, ctx, sink: run_job(f"{job_id}-{next(ids)}", job, ctx, sink)

args = argparse.Namespace(tiny=False, cache=None, audio_s=float(audio_s), preset="turbo", size="infinitetalk-480",
                          steps=None, output="local", override=overrides)
result = {"overrides": overrides, "audio_s": float(audio_s), "runs": []}
with tempfile.TemporaryDirectory(prefix="first-segment-") as tmp:
    for i in range(int(runs)):
        if i and (time.perf_counter() - T0) + 1.3 * result["runs"][-1]["job_s"] > float(left) - 10:
            result["skipped_runs"] = int(runs) - i
            break
        args.audio_s = float(audio_s) + 0.04 * i  # one frame longer per run: new audio, no embedding cache hit
        r = fs.measure(args, Path(tmp))
        if i == 0:
            holder_ctx = holder["ctx"]
            eng = holder_ctx.engine.get()
            import torch
            result["engine"] = {
                "class": type(eng).__name__, "ranks": holder_ctx.cfg.gpu.parallel.ranks,
                "attention_backend": str(getattr(eng, "attention_backend", None)),
                "compile_dit": eng.options.compile, "load_s": holder_ctx.engine.load_seconds,
                "dist_initialized": torch.distributed.is_available() and torch.distributed.is_initialized(),
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                "max_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0,
            }
        r["run"] = i
        r["compiled_in_this_run"] = i == 0 and result["engine"]["compile_dit"]
        result["runs"].append(r)
        Path(out).write_text(json.dumps(result, indent=1))
        print("RUN", i, json.dumps({k: r[k] for k in ("first_chunk_s", "first_segment_s", "segment_after_chunk_s",
                                                    "segment_after_chunk_all_s", "chunks", "segments", "job_s")}))
print("RESULT", json.dumps(result))
EOF
echo "rc=$? after $(( $(date +%s) - T0 )) s"
