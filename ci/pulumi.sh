#!/usr/bin/env bash
# Run `pulumi preview` or `pulumi up` for one stack, with its secrets taken from the environment
# (the CI's secrets), never from files in the repository.
# Usage: ci/pulumi.sh preview|up
# Environment:
#   PULUMI_STACK          the stack, e.g. acme/infinitetalk/prod (required)
#   PULUMI_ACCESS_TOKEN   Pulumi Cloud token (or PULUMI_BACKEND_URL + PULUMI_CONFIG_PASSPHRASE)
#   RUNPOD_API_KEY        -> secret infinitetalk:runpodApiKey (required)
#   S3_ACCESS_KEY, S3_SECRET_KEY -> secrets infinitetalk:s3AccessKey / s3SecretKey (own S3 store; optional)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION: read by pulumi-aws itself (bucket mode aws)
#   IMAGE_TAG             optional: the worker image to deploy (read by conf/deploy as INFINITETALK_IMAGE)
#   PYTHON                interpreter with the infra extras (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=${1:-}
case "$cmd" in
  preview|up) ;;
  *) echo "usage: ci/pulumi.sh preview|up" >&2; exit 2 ;;
esac
: "${PULUMI_STACK:?set PULUMI_STACK (org/project/stack)}"
: "${RUNPOD_API_KEY:?set RUNPOD_API_KEY}"
command -v pulumi >/dev/null 2>&1 || { echo "ci/pulumi.sh: the pulumi CLI is not installed" >&2; exit 2; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=$(command -v python3); fi
fi
export PULUMI_PYTHON_CMD=$PY
export PULUMI_SKIP_UPDATE_CHECK=true

pulumi stack select --create "$PULUMI_STACK" --non-interactive
# Secrets go straight from the environment into the stack's encrypted config (stdin, not argv).
printf '%s' "$RUNPOD_API_KEY" | pulumi config set --secret infinitetalk:runpodApiKey
if [ -n "${S3_ACCESS_KEY:-}" ] && [ -n "${S3_SECRET_KEY:-}" ]; then
  printf '%s' "$S3_ACCESS_KEY" | pulumi config set --secret infinitetalk:s3AccessKey
  printf '%s' "$S3_SECRET_KEY" | pulumi config set --secret infinitetalk:s3SecretKey
fi
if [ -n "${IMAGE_TAG:-}" ]; then
  export INFINITETALK_IMAGE=$IMAGE_TAG
fi

if [ "$cmd" = preview ]; then
  exec pulumi preview --non-interactive --diff --stack "$PULUMI_STACK"
fi
exec pulumi up --yes --non-interactive --skip-preview --stack "$PULUMI_STACK"
