"""Motion mask (worker/engine/sampling/masks.py) on the tiny model: outside the mask the latents end as the
condition frame's latent, inside they move; an all-ones mask is the unmasked run bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from worker.engine.runtime import Engine
from worker.engine.sampling.generation import GenerationInputs, GenerationSettings, generate
from worker.engine.sampling.masks import latent_motion_mask, pin_outside
from testkit.tiny import ensure_tiny_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine.load(ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny"))


def _image() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 255, (160, 120, 3), dtype=np.uint8))


def _run(engine, mask):
    t = np.arange(16000) / 16000
    (emb,) = engine.embed_audio(((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32),))
    inputs = GenerationInputs(cond=_image(), audio=(emb,), context=engine.encode_text("a person talks"),
                              context_null=engine.encode_text("blurry"), motion_mask=mask)
    s = GenerationSettings(sample_steps=3, frame_num=17, motion_frame=5, seed=3, mode="clip",
                           bucket=engine.bucket_table("infinitetalk-480"))
    traced: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        chunks = list(generate(engine.dit, engine.vae, engine.encode_clip, inputs, s,
                               trace=lambda n, x: traced.__setitem__(n, x.clone())))
    return traced, chunks


def test_outside_the_mask_the_latent_ends_as_the_reference_inside_it_moves(engine):
    mask = np.zeros((160, 120), bool)
    mask[:, :60] = True  # the left half may move
    traced, _ = _run(engine, mask)
    final, still = traced["chunk0.final_latent"], traced["chunk0.y"][0, 4:, :1]
    grid = latent_motion_mask(mask, (final.shape[-2] * 8, final.shape[-1] * 8)).bool()
    assert grid.any() and (~grid).any()
    outside = final[:, :, ~grid]
    torch.testing.assert_close(outside, still[:, :, ~grid].expand_as(outside), rtol=0, atol=0)
    assert not torch.equal(final[:, 1:, grid], still[:, :, grid].expand_as(final[:, 1:, grid]))
    plain, _ = _run(engine, None)  # without a mask the same region moves: the pinning is the mask's doing
    assert not torch.equal(plain["chunk0.final_latent"][:, 1:, ~grid],
                           still[:, :, ~grid].expand_as(final[:, 1:, ~grid]))


def test_an_all_ones_mask_is_the_unmasked_run(engine):
    full, chunks = _run(engine, np.ones((160, 120), bool))
    plain, plain_chunks = _run(engine, None)
    torch.testing.assert_close(full["chunk0.final_latent"], plain["chunk0.final_latent"], rtol=0, atol=0)
    torch.testing.assert_close(chunks[0].frames, plain_chunks[0].frames, rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0, 1000))
def test_pin_outside_keeps_the_inside_and_noises_the_outside_to_the_level(seed, t):
    g = torch.Generator().manual_seed(seed)
    latent, noise = torch.randn(4, 3, 5, 6, generator=g), torch.randn(4, 3, 5, 6, generator=g)
    still = torch.randn(4, 1, 5, 6, generator=g)
    mask = (torch.rand(5, 6, generator=g) > 0.5).float()
    out = pin_outside(latent, mask, still, noise, torch.tensor([t]))
    inside = mask.bool()
    assert torch.equal(out[:, :, inside], latent[:, :, inside])
    s = t / 1000
    want = (1 - s) * still + s * noise
    torch.testing.assert_close(out[:, :, ~inside], want[:, :, ~inside])
    if t == 0:
        assert torch.equal(out[:, :, ~inside], still.expand_as(out)[:, :, ~inside])


def test_the_engine_request_carries_the_mask_to_the_sampler(engine):
    import dataclasses

    from worker.engine.runtime import EngineRequest

    t = np.arange(16000) / 16000
    req = EngineRequest(cond=_image(), audio_tracks=((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32),),
                        prompt="a person talks", negative_prompt="blurry",
                        settings=GenerationSettings(sample_steps=2, frame_num=17, motion_frame=5, seed=3))
    frames = lambda r: torch.cat([c.frames for c in engine.generate(r)], dim=1)  # noqa: E731
    plain = frames(req)
    ones = frames(dataclasses.replace(req, motion_mask=np.ones((160, 120), bool)))
    torch.testing.assert_close(ones, plain, rtol=0, atol=0)  # default path: no change
    half = np.zeros((160, 120), bool)
    half[:, :60] = True
    masked = frames(dataclasses.replace(req, motion_mask=half))
    assert not torch.equal(masked, plain)
    # the still half moves less over time than in the unmasked video
    still = lambda v: float((v[:, 1:, :, -20:] - v[:, :1, :, -20:]).abs().mean())  # noqa: E731
    assert still(masked) < still(plain)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_per_speaker_regions_give_the_masks_the_same_boxes_give(seed):
    from worker.engine.sampling.generation import speaker_masks

    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(40, 200)), int(rng.integers(40, 200))
    boxes, regions = [], []
    for _ in range(2):
        a, c = sorted(rng.choice(h + 1, 2, replace=False)); b, d = sorted(rng.choice(w + 1, 2, replace=False))
        boxes.append((a, b, c, d))
        r = np.zeros((h, w), bool); r[a:c, b:d] = True
        regions.append(r)
    target = (int(rng.integers(2, 12)) * 16, int(rng.integers(2, 12)) * 16)
    assert torch.equal(speaker_masks((h, w), target, 2, regions=regions), speaker_masks((h, w), target, 2, boxes))


def test_two_speakers_with_regions_get_the_attention_masks_of_the_same_boxes(engine):
    t = np.arange(16000) / 16000
    a = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    embs = engine.embed_audio((a, a[::-1].copy()))
    s = GenerationSettings(sample_steps=1, frame_num=17, motion_frame=5, seed=3, mode="clip",
                           bucket=engine.bucket_table("infinitetalk-480"))

    def masks(**kw):
        inputs = GenerationInputs(cond=_image(), audio=embs, context=engine.encode_text("two people talk"),
                                  context_null=engine.encode_text("blurry"), **kw)
        traced: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            list(generate(engine.dit, engine.vae, engine.encode_clip, inputs, s,
                          trace=lambda n, x: traced.__setitem__(n, x.clone())))
        return traced["chunk0.ref_target_masks"]

    left, right = np.zeros((160, 120), bool), np.zeros((160, 120), bool)
    left[10:150, 5:55], right[10:150, 65:115] = True, True
    by_regions = masks(speaker_regions=(left, right))
    assert torch.equal(by_regions, masks(bboxes=((10, 5, 150, 55), (10, 65, 150, 115))))
    tri = np.zeros((160, 120), bool)
    tri[100:160, 0:30] = True  # another shape for person1: its mask (and the background) change, person2's not
    other = masks(speaker_regions=(tri, right))
    assert not torch.equal(other[0], by_regions[0]) and torch.equal(other[1], by_regions[1])
