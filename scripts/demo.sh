#!/usr/bin/env bash
# The README's first command: set up, then run the single-image example on the embedded tiny model with local storage.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/infinitetalk run examples/single_image.json "$@"
