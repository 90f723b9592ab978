#!/usr/bin/env bash
# The README's second command: set up, then run the whole test suite.
# Two pytest workers (files stay together so module fixtures are shared), one BLAS thread each:
# the tiny-model jobs are many small ops, and oversubscribed threads make them 10-20x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
INFINITETALK_WITH_BROWSER=1 INFINITETALK_WITH_CLIENT=1 scripts/bootstrap.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
