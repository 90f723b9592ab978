"""The `lightning` preset: 4 distilled steps with guidance off, i.e. exactly one DiT pass a step; and the one
log line in which the engine names the kernels a tier's settings resolved to."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from configuration import compose_config
from worker.resolve import apply_job_overrides
from worker.resolve import generation_settings
from worker.engine.sampling.generation import GenerationSettings
from worker.engine.sampling.guidance import COND, DROP_AUDIO, GuidanceConfig, Guider
from worker.engine.runtime import Engine, EngineRequest
from testkit.tiny import ensure_tiny_checkpoint
from contract.job import SAMPLER_PRESETS, parse_job_input


def _settings(preset: str) -> GenerationSettings:
    job = parse_job_input({"image": "/runpod-volume/a.png", "audio": "/runpod-volume/a.wav", "sampler": preset})
    return generation_settings(apply_job_overrides(compose_config(), job))


def test_lightning_is_a_preset_with_guidance_off():
    assert "lightning" in SAMPLER_PRESETS
    s = _settings("lightning")
    assert (s.sample_steps, s.text_guide_scale, s.audio_guide_scale, s.sample_shift) == (4, 1.0, 1.0, 2.0)
    assert s.guidance.branches == (COND,)
    assert _settings("turbo").guidance.branches == (COND, DROP_AUDIO)  # turbo keeps its audio guidance


def test_one_pass_guidance_returns_the_conditional_prediction_exactly():
    g = Guider(GuidanceConfig(text_guide_scale=1.0, audio_guide_scale=1.0, use_apg=True))
    cond = torch.randn(16, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    assert g.config.one_pass and torch.equal(g.combine({COND: cond}), cond)
    # one pass is exactly what the two-pass formula gives at audio scale 1, up to float rounding
    drop = torch.randn_like(cond)
    two = Guider(GuidanceConfig(text_guide_scale=1.0, audio_guide_scale=1.0 + 1e-12))
    torch.testing.assert_close(two.combine({COND: cond, DROP_AUDIO: drop}), cond, atol=1e-6, rtol=0)
    assert not GuidanceConfig(text_guide_scale=1.0, audio_guide_scale=2.0).one_pass
    assert not GuidanceConfig(text_guide_scale=2.0, audio_guide_scale=1.0).one_pass


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine.load(ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny"))


def _request(audio_scale: float) -> EngineRequest:
    t = np.arange(16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    rng = np.random.default_rng(1)
    return EngineRequest(
        cond=Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)),
        audio_tracks=(audio,), prompt="a person talks", negative_prompt="blurry",
        settings=GenerationSettings(sample_steps=4, text_guide_scale=1.0, audio_guide_scale=audio_scale, sample_shift=2.0, frame_num=17,
                                    motion_frame=5, mode="streaming", max_frames=1000, seed=3, color_correction_strength=0.0),
    )


def test_lightning_runs_one_dit_pass_per_step_on_the_tiny_model(engine):
    """Observed at the DiT: one call of batch 1 per step (turbo: one batched call of 2 passes per step)."""
    calls: list[int] = []
    hook = engine.dit.register_forward_pre_hook(lambda m, args: calls.append(int(args[0].shape[0])))
    try:
        lightning = torch.cat([c.frames for c in engine.generate(_request(1.0))], dim=1)
        n_chunks = len(calls) // 4
        assert n_chunks >= 2 and calls == [1] * 4 * n_chunks
        calls.clear()
        turbo = torch.cat([c.frames for c in engine.generate(_request(2.0))], dim=1)
        assert calls == [2] * 4 * n_chunks
    finally:
        hook.remove()
    assert lightning.shape == turbo.shape and bool(torch.isfinite(lightning).all())
    assert float((lightning - turbo).abs().max()) > 0  # guidance off changes the video


def test_engine_logs_the_kernels_it_chose_once_at_load(tmp_path, caplog):
    import logging

    layout = ensure_tiny_checkpoint(tmp_path / "tiny")
    with caplog.at_level(logging.INFO, logger="worker.engine.runtime"):
        Engine.load(layout)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("engine kernels:")]
    assert lines == ["engine kernels: attention=sdpa (asked sdpa), linears=float32, compile=False, device=cpu"]
