# Image variants and their tags. Examples:
#   docker buildx bake slim                               # the worker, weights on the network volume
#   HF_TOKEN=hf_... docker buildx bake baked              # every baked variant (model x bundle dtype)
#   HF_TOKEN=hf_... docker buildx bake baked-single-fp8   # one of them
#   VERSION=1.2.0 REGISTRY=ghcr.io/acme PUSH=true docker buildx bake release
# The Hugging Face token only ever travels as the build secret `hf_token`.

variable "REGISTRY" {
  default = "ghcr.io/infinitetalk-serve"
}
variable "IMAGE" {
  default = "worker"
}
variable "VERSION" {
  default = "dev"
}
# The same defaults as images/Dockerfile (tests/ci/test_image_pins.py checks they agree).
variable "TORCH_VERSION" {
  default = "2.11.0"
}
variable "TORCH_INDEX_URL" {
  default = "https://download.pytorch.org/whl/cu130"
}
variable "CUDA_IMAGE" {
  default = "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"
}
# Registry-backed build cache, shared by CI runs (empty: local cache only).
variable "CACHE_REF" {
  default = ""
}

# slim is the image the endpoint uses by default (conf/deploy: ghcr.io/infinitetalk-serve/worker:latest);
# baked variants carry a suffix naming the adapter and the bundle dtype.
function "tags" {
  params = [suffix]
  result = suffix == "" ? ["${REGISTRY}/${IMAGE}:${VERSION}", "${REGISTRY}/${IMAGE}:latest"] : [
    "${REGISTRY}/${IMAGE}:${VERSION}-${suffix}",
    "${REGISTRY}/${IMAGE}:latest-${suffix}",
  ]
}

function "cache_from" {
  params = [name]
  result = CACHE_REF == "" ? [] : ["type=registry,ref=${CACHE_REF}:${name}"]
}

function "cache_to" {
  params = [name]
  result = CACHE_REF == "" ? [] : ["type=registry,ref=${CACHE_REF}:${name},mode=max"]
}

group "default" {
  targets = ["slim"]
}

group "release" {
  targets = ["slim", "baked"]
}

target "_common" {
  context    = "."
  dockerfile = "images/Dockerfile"
  platforms  = ["linux/amd64"]
  args = {
    CUDA_IMAGE      = CUDA_IMAGE
    TORCH_VERSION   = TORCH_VERSION
    TORCH_INDEX_URL = TORCH_INDEX_URL
    VERSION         = VERSION
  }
  labels = {
    "org.opencontainers.image.source" = "https://github.com/infinitetalk-serve/infinitetalk-serve"
  }
}

target "slim" {
  inherits   = ["_common"]
  target     = "slim"
  tags       = tags("")
  cache-from = cache_from("slim")
  cache-to   = cache_to("slim")
}

target "baked" {
  name     = "baked-${variant.adapter}-${dtype}"
  inherits = ["_common"]
  target   = "baked"
  matrix = {
    variant = [
      { model = "infinitetalk_single", adapter = "single" },
      { model = "infinitetalk_multi", adapter = "multi" },
    ]
    dtype = ["bf16", "fp8"]
  }
  args = {
    MODEL        = variant.model
    ADAPTER      = variant.adapter
    BUNDLE_DTYPE = dtype
  }
  secret     = ["id=hf_token,env=HF_TOKEN"]
  tags       = tags("${variant.adapter}-${dtype}")
  cache-from = cache_from("slim")
}
