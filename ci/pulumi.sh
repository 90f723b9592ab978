#!/usr/bin/env bash
# Run `pulumi preview` or `pulumi up` for one stack; the decisions live in infra/ci_stack.py
# (tested without the CLI): committed Pulumi.<stack>.yaml required, secrets from the environment
# into the stack's encrypted config via stdin, IMAGE_TAG -> infinitetalk:image, `up` refreshes.
# Usage: ci/pulumi.sh preview|up
# Environment (per job: previews get preview credentials and the preview stack only):
#   PULUMI_STACK          the stack, e.g. acme/infinitetalk/prod (required; Pulumi.<name>.yaml must be committed)
#   PULUMI_ACCESS_TOKEN   Pulumi Cloud token, or PULUMI_BACKEND_URL + PULUMI_CONFIG_PASSPHRASE (self-managed)
#   RUNPOD_API_KEY        -> secret infinitetalk:runpodApiKey (required)
#   S3_ACCESS_KEY, S3_SECRET_KEY -> secrets infinitetalk:s3AccessKey / s3SecretKey (own S3 store; optional)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION: read by pulumi-aws itself (bucket mode aws)
#   IMAGE_TAG             the worker image to deploy: repo@sha256:<digest> or repo:<release tag>
#   PYTHON                interpreter with the infra extras (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  preview|up) ;;
  *) echo "usage: ci/pulumi.sh preview|up" >&2; exit 2 ;;
esac
command -v pulumi >/dev/null 2>&1 || { echo "ci/pulumi.sh: the pulumi CLI is not installed" >&2; exit 2; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=$(command -v python3); fi
fi
export PULUMI_PYTHON_CMD=$PY
exec "$PY" -m infra.ci_stack "$1"
