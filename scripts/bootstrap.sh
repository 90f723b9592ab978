#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine: system tools, then one venv with the worker and dev extras.
# Both README commands call it, so "fresh machine" and "second run" take the same path.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
if [ "${INFINITETALK_WITH_BROWSER:-0}" = "1" ] && ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q -U pip
  # CPU torch: the machine's local wheel when present, else PyTorch's CPU index (never the multi-GB CUDA build).
  .venv/bin/python -c "import torch" 2>/dev/null \
    || .venv/bin/pip install -q "torch==2.13.0" 2>/dev/null \
    || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  .venv/bin/pip install -q -e ".[worker,infra,browser,dev]"
  rm -f .venv/.installed-*; touch "$stamp"
fi

# The UI lives in its own venv: gradio and runpod pin incompatible tomlkit ranges (ARCHITECTURE.md section 8),
# and the client only speaks HTTP, so it never needs runpod.
if [ "${INFINITETALK_WITH_CLIENT:-0}" = "1" ]; then
  [ -x .venv-client/bin/python ] || "$PY" -m venv .venv-client
  cstamp=.venv-client/.installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
  if [ ! -f "$cstamp" ]; then
    .venv-client/bin/pip install -q -U pip
    .venv-client/bin/pip install -q -e ".[client]"
    rm -f .venv-client/.installed-*; touch "$cstamp"
  fi
fi
