"""The engine facade on the tiny model: loads through the strict loaders, generates, caches prompts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.errors import EngineOOMError, WeightLoadError
from worker.engine.generation import GenerationSettings
from worker.engine.runtime import Engine, EngineOptions, EngineRequest, _bucket_scale
from worker.engine.tiny import ensure_tiny_checkpoint


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def engine(layout):
    return Engine.load(layout)


def request(seconds: float, **settings) -> EngineRequest:
    t = np.arange(int(16000 * seconds)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    base = dict(steps=2, frame_num=17, motion_frame=5, mode="streaming", max_frames=1000, seed=3)
    base.update(settings)
    return EngineRequest(
        cond=Image.new("RGB", (120, 160), (200, 120, 90)),
        audio_tracks=(audio,),
        prompt="a person talks",
        negative_prompt="blurry",
        settings=GenerationSettings(**base),
    )


def test_every_component_loaded_in_the_requested_dtype(engine):
    assert next(engine.dit.parameters()).dtype == torch.float32
    assert set(engine.report.seconds) == {"dit", "vae", "t5", "clip", "wav2vec2"}


def test_streaming_covers_the_audio_in_chunks(engine):
    chunks = list(engine.generate(request(1.5)))
    frames = sum(c.frames_uint8.shape[0] for c in chunks)
    assert len(chunks) > 1 and frames == int(1.5 * 25)
    assert all(c.frames_uint8.dtype == np.uint8 and c.frames_uint8.shape[-1] == 3 for c in chunks)


def test_audio_shorter_than_a_chunk_still_renders_one_chunk(engine):
    chunks = list(engine.generate(request(0.2)))
    assert len(chunks) == 1 and chunks[0].frames_uint8.shape[0] >= 5


def test_prompt_encodings_are_cached(engine):
    a = engine.encode_text("cached prompt")
    assert engine.encode_text("cached prompt") is a


def test_tiny_buckets_are_scaled_multiples_of_16():
    table = _bucket_scale({"1.00": ([640, 640], 1), "0.50": ([448, 896], 1)}, 1 / 16)
    assert table == {"1.00": ([32, 32], 1), "0.50": ([32, 64], 1)}


def test_injected_oom_surfaces_as_engine_oom_once(layout):
    eng = Engine.load(layout, EngineOptions(fault="oom@step"))
    with pytest.raises(EngineOOMError):
        list(eng.generate(request(0.5)))
    assert list(eng.generate(request(0.5)))


def test_truncated_shard_is_named(layout, tmp_path):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(layout.ckpt_dir.parent, copy)
    shard = copy / layout.ckpt_dir.name / layout.dit_shards[2].name
    shard.write_bytes(shard.read_bytes()[:100])
    from worker.engine.tiny import tiny_layout

    with pytest.raises(WeightLoadError, match=shard.name):
        Engine.load(tiny_layout(copy))


def test_a_repacked_bundle_replaces_shards_and_adapter(layout, tmp_path):
    from dataclasses import replace

    from worker.weights.repack import repack

    bundle = tmp_path / "dit-bf16.safetensors"
    repack(layout.dit_files, bundle, dtype="bfloat16", config_file=layout.dit_config)
    eng = Engine.load(replace(layout, dit_bundle=bundle))
    ref = Engine.load(layout)
    for (k, a), (_, b) in zip(sorted(eng.dit.state_dict().items()), sorted(ref.dit.state_dict().items())):
        torch.testing.assert_close(a, b.to(torch.bfloat16).to(a.dtype), rtol=0, atol=0, msg=k)
