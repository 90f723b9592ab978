#!/usr/bin/env bash
# One device call: stage the GPU-only wheels carried in .whl/ (e.g. fa3-fwd), then run the whole suite with a
# deadline, writing JSON and the log under $OUT. Run from the repository root on the GPU machine:
#
#   bash bench/gpu_suite.sh                      # default parts, see PARTS below
#   PARTS=matmul,attn DEADLINE_S=100 bash bench/gpu_suite.sh
#
# Here (before the call): mkdir -p .whl; echo /.whl/ >> .git/info/exclude;
#   pip download fa3-fwd==0.0.3 --no-deps -d .whl        (then carry ".whl" with the call)
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
DEADLINE_S=${DEADLINE_S:-470}
CHUNKS=${CHUNKS:-2}
ITERS=${ITERS:-3}
# bf16 SDPA first (the earlier figures, re-measured, and the reference video), then FA3 bf16, fp8 attention,
# fp8 linears + fp8 attention (the H100/H200 tiers' defaults with the fp8 model), the chunks at those defaults
# (turbo, turbo with guidance reuse, lightning), and last fp8 linears with bf16 FA3.
PARTS=${PARTS-cudatests,matmul,attn,compile,turbo,backend:fa3,backend:fa3_fp8,fp8,profile,turbo,turbo_reuse,lightning,backend:fa3}

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/error.txt"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; \
  python3 -c 'import fa3_fwd_interface as f; print("fa3_fwd_interface", f.__file__)' 2>&1 | tail -1; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
[ -n "$PARTS" ] && timeout $((DEADLINE_S + 120)) python3 bench/run_suite.py --out "$OUT/suite.json" --parts "$PARTS" \
  --chunks "$CHUNKS" --iters "$ITERS" --deadline-s "$DEADLINE_S" ${SUITE_ARGS:-} 2>&1 | tee "$OUT/suite.log"
# COLD=none|fp8: afterwards the cold start (bench/cold_start.py, full size; writes ~35-53 GB under /root/cold);
# COLD_ARGS="--compare-warm" adds a start without the start-up read-ahead; PARTS= (empty) runs the cold start only
if [ -n "${COLD:-}" ]; then
  timeout "${COLD_TIMEOUT_S:-300}" python3 bench/cold_start.py --out "$OUT/cold_${COLD}.json" --dir /root/cold \
    --scale full --device cuda --quant "$COLD" ${COLD_ARGS:-} 2>&1 | tail -40 | tee "$OUT/cold_${COLD}.log"
fi
