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
