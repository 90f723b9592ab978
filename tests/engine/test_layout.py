"""Where the original layout's files are, and how a broken installation is named."""
from __future__ import annotations

import json

import pytest

from worker.engine.errors import WeightLoadError
from worker.engine.formats.layout import CheckpointLayout, dit_shard_names, is_adapter_key


def layout(tmp_path) -> CheckpointLayout:
    return CheckpointLayout(tmp_path / "ckpt", tmp_path / "it" / "infinitetalk.safetensors", tmp_path / "w2v")


def test_adapter_keys_are_exactly_the_infinitetalk_additions():
    assert is_adapter_key("audio_proj.proj1.weight")
    assert is_adapter_key("blocks.3.audio_cross_attn.q_linear.weight")
    assert is_adapter_key("blocks.39.norm_x.bias")
    assert not is_adapter_key("blocks.3.cross_attn.q.weight")
    assert not is_adapter_key("blocks.3.norm3.weight")
    assert not is_adapter_key("img_emb.proj.0.weight")


def test_default_shards_are_the_seven_published_names(tmp_path):
    lay = layout(tmp_path)
    assert [p.name for p in lay.dit_shards] == dit_shard_names()
    assert dit_shard_names()[0] == "diffusion_pytorch_model-00001-of-00007.safetensors"
    assert lay.dit_files[-1] == lay.infinitetalk_file


def test_index_json_lists_the_shards(tmp_path):
    lay = layout(tmp_path)
    lay.ckpt_dir.mkdir()
    (lay.ckpt_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}})
    )
    assert [p.name for p in lay.dit_shards] == ["s1.safetensors", "s2.safetensors"]


def test_check_names_the_first_missing_file(tmp_path):
    lay = layout(tmp_path)
    with pytest.raises(WeightLoadError, match="config.json.*file not found"):
        lay.check()


def test_bad_components_file_is_named(tmp_path):
    lay = layout(tmp_path)
    lay.ckpt_dir.mkdir()
    (lay.ckpt_dir / "engine_components.json").write_text("{not json")
    with pytest.raises(WeightLoadError, match="engine_components.json"):
        lay.component_overrides()


def _touch(path, size=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def test_read_order_is_the_engines_load_order(tmp_path):
    """DiT source first (bundle > fp8 quant file > shards + adapter), then VAE, umT5 + tokenizer, CLIP, wav2vec2."""
    base = layout(tmp_path)
    tok = _touch(base.t5_tokenizer / "tokenizer.json")
    w2v = [_touch(base.wav2vec_dir / n) for n in ("config.json", "model.safetensors")]
    tail = [base.vae_file, base.t5_file, tok, base.clip_file, *w2v]
    assert base.read_order() == [*base.dit_files, *tail]
    quant = CheckpointLayout(base.ckpt_dir, base.infinitetalk_file, base.wav2vec_dir, quant_file=tmp_path / "q.safetensors")
    assert quant.read_order("fp8") == [tmp_path / "q.safetensors", *tail]
    assert quant.read_order("none") == [*base.dit_files, *tail]  # bf16 never reads the quant file
    bundle = CheckpointLayout(base.ckpt_dir, base.infinitetalk_file, base.wav2vec_dir, dit_bundle=tmp_path / "b.st",
                              quant_file=tmp_path / "q.safetensors")
    assert bundle.read_order("fp8") == bundle.read_order("none") == [tmp_path / "b.st", *tail]
