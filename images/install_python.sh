#!/usr/bin/env bash
# The image's whole Python layer as one script. images/Dockerfile runs it (in two steps, so the
# dependency layer stays cached while the source changes), and ci/image_smoke.sh runs it into a
# fresh virtual environment, so CI proves the very steps the image takes.
#
# Usage: images/install_python.sh PYTHON SRC [deps|project|all]
#   PYTHON  the target environment's interpreter (e.g. /opt/venv/bin/python; create the venv first)
#   SRC     the project folder (the deps step reads only SRC/pyproject.toml)
# Environment:
#   TORCH_VERSION    torch release to pin, e.g. 2.11.0 (empty: the newest pip finds within pyproject's range)
#   TORCH_INDEX_URL  index holding that torch build, e.g. https://download.pytorch.org/whl/cu130
#                    (empty: pip's configured indexes; CI uses the CPU build from there)
#   EXTRAS           the project's extras to install (default: worker)
#   PIP_ARGS         extra arguments for every pip install (e.g. --no-cache-dir)
set -euo pipefail

PY=${1:?usage: install_python.sh PYTHON SRC [deps|project|all]}
SRC=${2:?usage: install_python.sh PYTHON SRC [deps|project|all]}
STEP=${3:-all}
EXTRAS=${EXTRAS:-worker}
read -r -a pip_args <<<"${PIP_ARGS:-}"

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "${pip_args[@]}" "$@"; }

deps() {
  pip_install -U pip "setuptools>=69" wheel
  local spec=torch
  [ -n "${TORCH_VERSION:-}" ] && spec="torch==${TORCH_VERSION}"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_install "$spec" --index-url "$TORCH_INDEX_URL"
  else
    pip_install "$spec"
  fi
  local tmp
  tmp=$(mktemp -d)
  # The extras' requirements, read from pyproject.toml (self-references such as
  # infinitetalk-serve[engine] expanded), so this layer needs no source tree.
  "$PY" - "$SRC/pyproject.toml" "$EXTRAS" >"$tmp/requirements.txt" <<'PYEOF'
import re
import sys
import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
name = project["name"]
optional = project.get("optional-dependencies", {})
seen, out = set(), list(project.get("dependencies", []))

def expand(extra):
    if extra in seen:
        return
    seen.add(extra)
    for req in optional[extra]:
        m = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.replace(" ", ""))
        if m:
            for inner in m.group(1).split(","):
                expand(inner)
        else:
            out.append(req)

for extra in sys.argv[2].split(","):
    if extra:
        expand(extra)
print("\n".join(dict.fromkeys(out)))
PYEOF
  # keep the torch build chosen above (pip would otherwise be free to swap it for another)
  "$PY" -c "import torch; print('torch==' + torch.__version__)" >"$tmp/constraints.txt"
  pip_install -r "$tmp/requirements.txt" -c "$tmp/constraints.txt"
  rm -rf "$tmp"
}

project() {
  # No build isolation: setuptools is already here, and the build needs no index.
  pip_install --no-deps --no-build-isolation "$SRC"
  "$PY" -c "import torch, runpod, contract, configuration, worker.handler, worker.engine.models.dit, worker.engine.formats.bundle; print('python layer ok: torch', torch.__version__)"
}

case "$STEP" in
  deps) deps ;;
  project) project ;;
  all) deps; project ;;
  *) echo "unknown step: $STEP (deps|project|all)" >&2; exit 2 ;;
esac
