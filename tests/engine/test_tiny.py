"""The tiny model is written in the published formats and names, deterministically, once."""
from __future__ import annotations

import hashlib
import json

import torch
from safetensors import safe_open

from worker.engine.formats.layout import T5_TOKENIZER_DIR, dit_shard_names, is_adapter_key
from testkit.tiny import TINY_VERSION, ensure_tiny_checkpoint


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_written_in_the_real_layout(tmp_path):
    layout = ensure_tiny_checkpoint(tmp_path / "tiny")
    layout.check()
    assert [p.name for p in layout.dit_shards] == dit_shard_names()
    assert (layout.ckpt_dir / T5_TOKENIZER_DIR / "tokenizer.json").is_file() or any((layout.ckpt_dir / T5_TOKENIZER_DIR).iterdir())
    with safe_open(str(layout.infinitetalk_file), "pt") as f:
        adapter_keys = list(f.keys())
    assert adapter_keys and all(is_adapter_key(k) for k in adapter_keys)
    for shard in layout.dit_shards:
        with safe_open(str(shard), "pt") as f:
            assert not any(is_adapter_key(k) for k in f.keys())
    index = json.loads((layout.ckpt_dir / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(dit_shard_names())
    t5 = torch.load(layout.t5_file, weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in t5.values())
    clip = torch.load(layout.clip_file, weights_only=True)
    assert any(k.startswith("visual.") for k in clip) and "log_scale" in clip


def test_deterministic_and_written_once(tmp_path):
    a = ensure_tiny_checkpoint(tmp_path / "a")
    b = ensure_tiny_checkpoint(tmp_path / "b")
    assert _digest(a.ckpt_dir.parent) == _digest(b.ckpt_dir.parent)
    stamp = tmp_path / "a" / ".complete"
    mtime = stamp.stat().st_mtime_ns
    ensure_tiny_checkpoint(tmp_path / "a")
    assert stamp.stat().st_mtime_ns == mtime and stamp.read_text() == TINY_VERSION


def test_stale_version_is_rebuilt(tmp_path):
    root = tmp_path / "t"
    ensure_tiny_checkpoint(root)
    (root / ".complete").write_text("v0")
    shard = root / "Wan2.1-I2V-14B-480P" / dit_shard_names()[0]
    shard.write_bytes(b"junk")
    layout = ensure_tiny_checkpoint(root)
    assert (root / ".complete").read_text() == TINY_VERSION
    with safe_open(str(layout.dit_shards[0]), "pt") as f:
        assert list(f.keys())
