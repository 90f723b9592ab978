#!/usr/bin/env bash
# Build (and with PUSH=1, push) the images through docker-bake.hcl.
# Usage: ci/build_images.sh [bake target or group ...]    (default: slim)
# Environment: VERSION (default: the git tag at HEAD with its leading v dropped, else "dev"),
#   REGISTRY, IMAGE, CACHE_REF (see docker-bake.hcl), PUSH=1 to push, HF_TOKEN for the baked
#   targets (passed as the build secret hf_token, never as an argument).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VERSION:-}" ]; then
  tag=$(git describe --tags --exact-match 2>/dev/null || true)
  VERSION=${tag#v}
  VERSION=${VERSION:-dev}
fi
export VERSION
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(slim)
for t in "${targets[@]}"; do
  case "$t" in
    baked*|release)
      if [ -z "${HF_TOKEN:-}" ]; then
        echo "build_images: $t needs HF_TOKEN (the Hugging Face token, passed as a build secret)" >&2
        exit 2
      fi ;;
  esac
done

args=(--file docker-bake.hcl)
if [ "${PUSH:-0}" = "1" ]; then args+=(--push); else args+=(--load); fi
echo "build_images: version $VERSION, targets ${targets[*]}"
docker buildx bake "${args[@]}" --print "${targets[@]}" >/dev/null
exec docker buildx bake "${args[@]}" "${targets[@]}"
