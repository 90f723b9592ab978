"""verify: a clean install passes; a missing, truncated or altered file is named."""
from __future__ import annotations

import shutil

import pytest

from tools.weights.manifest import MANIFEST_NAME, build_manifest
from tools.weights.verify import verify


@pytest.fixture()
def install(tiny_root, tmp_path):
    root = tmp_path / "vol"
    shutil.copytree(tiny_root, root)
    build_manifest(root).save(root / MANIFEST_NAME)
    return root


SHARD = "Wan2.1-I2V-14B-480P/diffusion_pytorch_model-00004-of-00007.safetensors"


def test_clean_install_has_no_problems(install):
    assert verify(install) == []


def test_truncated_file_is_named(install):
    path = install / SHARD
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    problems = verify(install, hashes=False)
    assert [(p.path, p.kind) for p in problems] == [(SHARD, "truncated")]
    assert f"{size // 2} of {size} bytes" in str(problems[0])


def test_missing_file_is_named(install):
    (install / "Wan2.1-I2V-14B-480P" / "Wan2.1_VAE.pth").unlink()
    assert [(p.path, p.kind) for p in verify(install)] == [("Wan2.1-I2V-14B-480P/Wan2.1_VAE.pth", "missing")]


def test_altered_bytes_fail_the_hash_but_not_the_size_check(install):
    path = install / SHARD
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert verify(install, hashes=False) == []
    assert [(p.path, p.kind) for p in verify(install)] == [(SHARD, "hash")]


def test_corrupt_safetensors_header_is_caught_without_hashes(install):
    from tools.weights.manifest import FileEntry, Manifest

    path = install / SHARD
    data = bytearray(path.read_bytes())
    data[0:8] = (len(data) * 2).to_bytes(8, "little")  # header length past the end
    path.write_bytes(bytes(data))
    manifest = Manifest.load(install / MANIFEST_NAME)
    manifest.add(FileEntry(SHARD, len(data), None))
    assert [(p.path, p.kind) for p in verify(install, manifest)] == [(SHARD, "corrupt")]
