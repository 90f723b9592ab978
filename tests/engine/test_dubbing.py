"""Video dubbing strength: the step arithmetic, and on the tiny model: fewer steps from the noised video latents."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from PIL import Image

from worker.engine.runtime import Engine
from worker.engine.sampling.dubbing import noised, start_step
from worker.engine.sampling.generation import GenerationInputs, GenerationSettings, generate
from worker.engine.sampling.schedule import timesteps
from testkit.tiny import ensure_tiny_checkpoint


@given(st.integers(1, 100), st.floats(1e-6, 1.0))
def test_start_step_runs_the_strengths_share_of_the_steps_and_at_least_one(steps, strength):
    first = start_step(steps, strength)
    assert 0 <= first < steps and steps - first == max(1, min(steps, round(steps * strength)))
    assert start_step(steps, 1.0) == 0


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01])
def test_start_step_refuses_strengths_outside_0_1(bad):
    with pytest.raises(ValueError, match="dub_strength"):
        start_step(8, bad)


def test_noised_is_the_straight_path_between_latents_and_noise():
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(noised(x0, noise, torch.tensor([0.0])), x0)
    torch.testing.assert_close(noised(x0, noise, torch.tensor([1000.0])), noise)
    torch.testing.assert_close(noised(x0, noise, torch.tensor([250.0])), 0.75 * x0 + 0.25 * noise)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine.load(ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny"))


def _video(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 256, (160, 120, 3), dtype=np.uint8)) for _ in range(n)]


def _run(engine, strength, cond, steps=4):
    (emb,) = engine.embed_audio((np.sin(np.arange(16000) / 7).astype(np.float32) * 0.3,))
    s = GenerationSettings(sample_steps=steps, frame_num=17, motion_frame=5, seed=3, text_guide_scale=1.0,
                           audio_guide_scale=2.0, dub_strength=strength, guidance_every=2,
                           bucket=engine.bucket_table("infinitetalk-480"))
    inputs = GenerationInputs(cond=cond, audio=(emb,), context=engine.encode_text("a person talks"),
                              context_null=engine.encode_text("blurry"))
    traced: dict[str, torch.Tensor] = {}
    calls: list[int] = []
    hook = engine.dit.register_forward_pre_hook(lambda m, args: calls.append(int(args[0].shape[0])))
    try:
        with torch.inference_mode():
            chunks = list(generate(engine.dit, engine.vae, engine.encode_clip, inputs, s,
                                   trace=lambda n, t: traced.__setitem__(n, t.clone())))
    finally:
        hook.remove()
    return chunks, traced, calls


@pytest.mark.parametrize("as_iterator", [False, True], ids=["list", "iterator"])
def test_dub_strength_runs_fewer_steps_from_the_noised_video_latents(engine, as_iterator):
    frames = _video(40)
    full, full_trace, full_calls = _run(engine, 1.0, frames)
    cond = iter(frames) if as_iterator else frames
    part, trace, calls = _run(engine, 0.5, cond)
    n = len(part)
    assert n == len(full) >= 2
    # 4 steps, guidance every 2nd: full = [2, 1, 2, 1] per chunk; strength 0.5 runs steps 2 and 3: [2, 1]
    assert full_calls == [2, 1, 2, 1] * n and calls == [2, 1] * n
    assert "chunk0.step0.t" not in trace and "chunk0.step2.t" in trace and "chunk0.dub_start" not in full_trace
    ts = timesteps(4, GenerationSettings().sample_shift)
    for i in range(n):
        start = 12 * i  # frame_num 17, motion 5
        video = torch.cat([_resized(engine, frames[min(start + k, 39)], trace) for k in range(17)], dim=2)
        x0 = engine.vae.encode(video)[0].float()
        noise = trace[f"rng{_noise_call(trace, i)}.randn"]
        torch.testing.assert_close(trace[f"chunk{i}.dub_start"], noised(x0, noise, ts[2:3]), rtol=1e-5, atol=1e-5)
    assert sum(c.frames.shape[1] for c in part) == sum(c.frames.shape[1] for c in full)


def _resized(engine, frame, trace):
    from worker.engine.sampling.buckets import resize_to_target
    h, w = trace["chunk0.clip_input"].shape[-2:]
    return resize_to_target(frame, (h, w))


def _noise_call(trace, chunk):
    """rng call index of chunk `chunk`'s fresh noise: chunk 0 draws 1 call, each later chunk 1 + 2 per step run."""
    names = sorted((int(k[3:].split(".")[0]), k) for k in trace if k.startswith("rng") and k.endswith(".randn"))
    return names[chunk][0]


def test_dub_strength_below_1_needs_a_video(engine):
    with pytest.raises(ValueError, match="dub_strength"):
        _run(engine, 0.5, Image.new("RGB", (120, 160), (200, 120, 90)))
