"""images/Dockerfile, docker-bake.hcl and the endpoint's CUDA floor name one CUDA/torch line, and that line is
one the `hopper` extra's compiled kernels load on (else Hopper tiers silently lose FA3)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from infra.stack_config import IMAGE_MIN_CUDA

REPO = Path(__file__).resolve().parents[2]

# Facts read from the fa3-fwd 0.0.3 wheel (ELF NEEDED and undefined symbols of fa3_fwd/_C.abi3.so):
# it links libcudart.so.13 and torch's stable C ABI (aoti_torch_*), built against torch 2.10.
FA3_FWD_NEEDS = {"cuda": (13, 0), "torch": (2, 10)}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _dockerfile_args() -> dict[str, str]:
    text = (REPO / "images" / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))


def _bake_defaults() -> dict[str, str]:
    text = (REPO / "docker-bake.hcl").read_text()
    return dict(re.findall(r'variable "(\w+)" \{\s*default = "([^"]*)"\s*\}', text))


def _cuda_of_image(image: str) -> tuple[int, int]:
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu\d+\.\d+", image)
    assert match, f"unexpected base image {image!r}"
    return int(match[1]), int(match[2])


def _cuda_of_index(url: str) -> tuple[int, int]:
    match = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", url)
    assert match, f"unexpected torch index {url!r}"
    return int(match[1]), int(match[2])


def test_bake_defaults_equal_the_dockerfile_defaults() -> None:
    args, bake = _dockerfile_args(), _bake_defaults()
    for key in ("CUDA_IMAGE", "TORCH_VERSION", "TORCH_INDEX_URL"):
        assert bake[key] == args[key], key


def test_base_image_torch_build_and_endpoint_floor_are_one_cuda_line() -> None:
    args = _dockerfile_args()
    cuda = _cuda_of_image(args["CUDA_IMAGE"])
    assert _cuda_of_index(args["TORCH_INDEX_URL"]) == cuda
    assert _version(IMAGE_MIN_CUDA) == cuda


def test_the_image_line_loads_the_hopper_extras_fa3_kernels() -> None:
    args = _dockerfile_args()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "fa3-fwd==0.0.3" in extras["hopper"]
    assert "hopper" in re.search(r"^ARG EXTRAS=(\S+)$", (REPO / "images" / "Dockerfile").read_text(), re.M)[1]
    assert _cuda_of_image(args["CUDA_IMAGE"]) >= FA3_FWD_NEEDS["cuda"]
    assert _version(args["TORCH_VERSION"])[:2] >= FA3_FWD_NEEDS["torch"]


def test_the_parsers_refuse_what_they_do_not_know() -> None:
    import pytest

    with pytest.raises(AssertionError):
        _cuda_of_image("ubuntu:24.04")
    with pytest.raises(AssertionError):
        _cuda_of_index("https://download.pytorch.org/whl/cpu")
    assert _cuda_of_index("https://download.pytorch.org/whl/cu128") == (12, 8)
    assert _cuda_of_index("https://download.pytorch.org/whl/cu130") == (13, 0)
