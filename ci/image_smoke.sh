#!/usr/bin/env bash
# Prove the image's Python layer: a fresh virtual environment under a temp dir, the image's own
# install script (images/install_python.sh) run into it, then the image's entrypoint
# (`python -m worker.handler`) answering one --test_input job on the tiny model, run from outside
# the checkout so that the installed package (not the source tree) is what answers.
# Environment: PYTHON (interpreter for the venv; the image uses python3.12), KEEP_SMOKE=1 keeps
# the temp dir, TORCH_VERSION / TORCH_INDEX_URL as for install_python.sh (default: pip's CPU torch).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/image-smoke.XXXXXX")
if [ "${KEEP_SMOKE:-0}" = "1" ]; then echo "smoke: keeping $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi

# CPU torch, never the multi-GB CUDA build: the version the repo's .venv already has (its wheel
# is in pip's cache or find-links), else the newest from PyTorch's CPU index.
if [ -z "${TORCH_VERSION:-}" ] && [ -z "${TORCH_INDEX_URL:-}" ]; then
  if [ -x .venv/bin/python ] && have=$(.venv/bin/python -c "import torch; print(torch.__version__)" 2>/dev/null) \
     && [[ "$have" == *+cpu ]]; then
    export TORCH_VERSION=$have
  else
    export TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
  fi
fi

echo "smoke: fresh venv ($("$PY" --version)) in $tmp/venv"
"$PY" -m venv "$tmp/venv"
start=$(date +%s)
images/install_python.sh "$tmp/venv/bin/python" "$REPO" all
echo "smoke: python layer installed in $(( $(date +%s) - start )) s"

# The job's media sit on a "volume", the way a worker sees /runpod-volume.
mkdir -p "$tmp/volume/inputs" "$tmp/run"
cp examples/media/portrait.png examples/media/speech_person1.wav "$tmp/volume/inputs/"
payload=$(cat <<JSON
{"input": {"image": "$tmp/volume/inputs/portrait.png", "audio": "$tmp/volume/inputs/speech_person1.wav",
 "prompt": "A person talks to the camera.", "seed": 7, "output": {"target": "local"}}}
JSON
)

cd "$tmp/run"
set +e
env INFINITETALK_CONF_DIR="$REPO/conf" \
    INFINITETALK_MODEL=tiny INFINITETALK_GPU=cpu INFINITETALK_STORAGE=local \
    INFINITETALK_VOLUME_ROOT="$tmp/volume" INFINITETALK_WORK_DIR="$tmp/work" \
    INFINITETALK_CACHE_DIR="$tmp/cache" INFINITETALK_CACHE="$tmp/cache" \
    timeout 900 "$tmp/venv/bin/python" -m worker.handler --test_input "$payload" >"$tmp/handler.log" 2>&1
rc=$?
set -e
if [ $rc -ne 0 ]; then
  tail -n 60 "$tmp/handler.log" >&2
  echo "smoke: FAILED: the entrypoint exited with $rc" >&2
  exit 1
fi

# Runpod's local runner logs `Job result: {...}` (a Python literal); check the job's output.
"$tmp/venv/bin/python" - "$tmp/handler.log" "$tmp/run" <<'PYEOF'
import ast
import pathlib
import subprocess
import sys

log = pathlib.Path(sys.argv[1]).read_text()
lines = [l for l in log.splitlines() if "Job result:" in l]
if not lines:
    sys.exit("smoke: FAILED: no 'Job result:' line in the entrypoint's log")
result = ast.literal_eval(lines[-1].split("Job result:", 1)[1].strip())
output = result.get("output")
if not isinstance(output, dict) or "error" in output or result.get("error"):
    sys.exit(f"smoke: FAILED: job returned {result!r}")
videos = []
def walk(v):
    if isinstance(v, dict):
        for x in v.values():
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
    elif isinstance(v, str) and v.endswith(".mp4"):
        p = pathlib.Path(v.removeprefix("file://"))
        p = p if p.is_absolute() else pathlib.Path(sys.argv[2]) / p
        if p.is_file():
            videos.append(p)
walk(output)
if not videos:
    sys.exit(f"smoke: FAILED: no MP4 written (output {output!r})")
video = videos[0]
probe = subprocess.run(
    ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(video)],
    capture_output=True, text=True,
)
duration = float(probe.stdout.strip() or 0) if probe.returncode == 0 else -1.0
if probe.returncode == 0 and duration <= 0:
    sys.exit(f"smoke: FAILED: {video} has no duration")
print(f"smoke: ok: {video.name} ({video.stat().st_size} bytes, {duration:.2f} s), "
      f"{output.get('num_frames')} frames at {output.get('width')}x{output.get('height')}")
PYEOF
