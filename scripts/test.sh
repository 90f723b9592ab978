#!/usr/bin/env bash
# The README's second command: set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
INFINITETALK_WITH_BROWSER=1 INFINITETALK_WITH_CLIENT=1 scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
