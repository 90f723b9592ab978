"""manifest: stable listing without download leftovers, round trip, sizes and hashes."""
from __future__ import annotations

import hashlib

import pytest

from tools.weights.manifest import MANIFEST_NAME, FileEntry, Manifest, build_manifest


def test_build_skips_leftovers_and_round_trips(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"hello")
    (tmp_path / "b.safetensors").write_bytes(b"12345678")
    (tmp_path / "c.safetensors.partial").write_bytes(b"half")
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "z.incomplete").write_bytes(b"z")
    m = build_manifest(tmp_path)
    assert [f.path for f in m.files] == ["a/x.bin", "b.safetensors"]
    assert m.by_path()["a/x.bin"] == FileEntry("a/x.bin", 5, hashlib.sha256(b"hello").hexdigest())
    m.save(tmp_path / MANIFEST_NAME)
    assert Manifest.load(tmp_path / MANIFEST_NAME) == m
    assert [f.path for f in build_manifest(tmp_path).files] == ["a/x.bin", "b.safetensors"]  # itself excluded
    assert m.total_size() == 13


def test_add_replaces_by_path():
    m = Manifest()
    m.add(FileEntry("x", 1, None))
    m.add(FileEntry("x", 2, "ab"))
    assert m.files == [FileEntry("x", 2, "ab")]


def test_foreign_json_is_refused(tmp_path):
    (tmp_path / "m.json").write_text('{"files": []}')
    with pytest.raises(ValueError, match="not a weights manifest"):
        Manifest.load(tmp_path / "m.json")
