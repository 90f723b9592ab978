"""TeaCache: threshold 0 is the uncached run bit for bit; a high threshold skips forwards and still renders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.sampling.generation import GenerationSettings
from worker.engine.runtime import Engine, EngineOptions, EngineRequest
from worker.engine.sampling.teacache import COEFFICIENTS, RETAIN_STEPS, TeaCache, rescale
from testkit.tiny import ensure_tiny_checkpoint


def test_rescale_is_upstreams_polynomial():
    for coeffs in COEFFICIENTS.values():
        for x in (0.0, 0.003, 0.02, 0.1):
            assert rescale(coeffs, x) == pytest.approx(float(np.poly1d(coeffs)(x)), rel=1e-12, abs=1e-12)


def test_decisions_accumulate_per_branch_and_reset_after_a_compute():
    cache = TeaCache(thresh=0.25, coefficients=(1.0, 0.0), retain_steps=1)  # rescale(x) = x
    e = torch.ones(6, 4)
    last = {}
    for step, scale in enumerate([1.0, 1.1, 1.2, 1.3, 1.4]):
        cache.begin_step(step)
        for branch in ("cond", "uncond"):
            if cache.wants_compute(branch, e * scale):
                cache.store(branch, torch.full((2, 4), float(step)))
                last[branch] = step
            else:  # the residual of the branch's last computed step
                assert torch.equal(cache.reuse(branch), torch.full((2, 4), float(last[branch])))
    # rel changes 0.1, 0.0909, 0.0833 (sum 0.274 > 0.25 at step 3), then 0.0769: computed at 0, 3
    assert (cache.computed, cache.skipped) == (4, 6)
    cache.reset()
    cache.begin_step(3)
    assert cache.wants_compute("cond", e)  # nothing cached after a reset


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine.load(ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny"), EngineOptions())


def _run(engine: Engine, **teacache) -> tuple[np.ndarray, int]:
    calls = []
    hook = engine.dit.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        settings = GenerationSettings(
            sample_steps=9, sample_shift=5.0, text_guide_scale=5.0, audio_guide_scale=4.0, seed=3, frame_num=9, motion_frame=5,
            mode="clip", **teacache,
        )
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 255, (80, 64, 3), dtype=np.uint8))
        audio = (0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220)).astype(np.float32)
        request = EngineRequest(cond=image, audio_tracks=(audio,), prompt="a", negative_prompt="b", settings=settings)
        frames = np.concatenate([c.frames_uint8 for c in engine.generate(request)])
    finally:
        hook.remove()
    return frames, len(calls)


def test_threshold_zero_equals_no_teacache_exactly(engine):
    plain, n_plain = _run(engine)
    cached, n_cached = _run(engine, use_teacache=True, teacache_thresh=0.0)
    assert n_plain == n_cached == 9  # one speaker: the three passes share one batched call a step
    assert np.array_equal(plain, cached)


@pytest.mark.parametrize("model", sorted(COEFFICIENTS))
def test_high_threshold_skips_forwards_and_still_renders(engine, model):
    plain, n_plain = _run(engine)
    cached, n_cached = _run(engine, use_teacache=True, teacache_thresh=1e12, teacache_model=model)
    # the first RETAIN_STEPS steps always run; after that every step reuses the residuals
    assert n_cached == RETAIN_STEPS < n_plain
    assert cached.shape == plain.shape and cached.dtype == np.uint8
    assert cached.std() > 0


def test_job_settings_reach_the_generation_settings():
    from configuration import compose_config
    from worker.resolve import apply_job_overrides
    from worker.resolve import generation_settings
    from contract.job import parse_job_input

    cfg = compose_config(["sampler=quality"])
    job = parse_job_input(
        {"image": "/runpod-volume/a.png", "audio": "/runpod-volume/a.wav", "use_teacache": True,
         "teacache_thresh": 0.3, "size": "infinitetalk-480"}
    )
    s = generation_settings(apply_job_overrides(cfg, job))
    assert (s.use_teacache, s.teacache_thresh, s.teacache_model) == (True, 0.3, "infinitetalk-480")
