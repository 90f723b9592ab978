"""End-to-end parity of the generation loop with the generate_clip / generate_streaming goldens.

Real DiT and VAE with the golden tiny weights; T5 and CLIP are the stored stub outputs, as in the
golden runs. Every traced intermediate (audio windows, y, random draws, VAE encodes, every DiT input
and output per step, final latents, decoded and colour-corrected frames) is compared, and the
streamed chunks are reassembled into the final video.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import golden_cases, is_generation_case
from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT
from worker.engine.errors import GenerationCancelled
from worker.engine.sampling.generation import (
    GenerationInputs,
    GenerationSettings,
    generate,
    speaker_masks,
    to_uint8_frames,
)
from worker.engine.models.vae import VAEConfig, WanVAE


CASES = golden_cases(is_generation_case)
case_param = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])

STEP_ATOL = 1e-4
VIDEO_ATOL = 1e-3


@lru_cache(maxsize=4)
def _dit(folder: str) -> InfiniteTalkDiT:
    """DiT from a weights folder: config.json plus every safetensors file made only of model keys."""
    root = Path(folder)
    model = InfiniteTalkDiT(DiTConfig.from_json(root / "config.json"))
    expected = set(model.state_dict())
    state: dict[str, torch.Tensor] = {}
    for f in sorted(root.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            keys = set(h.keys())
        if keys and keys <= expected:
            state.update(load_file(f))
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=4)
def _vae(folder: str) -> WanVAE:
    root = Path(folder)
    return WanVAE.from_state_dict(load_file(root / "vae.safetensors"), VAEConfig.from_json(root / "config.json"))


def _setup(case: Path, **overrides):
    meta = json.loads((case / "meta.json").read_text())
    tensors = load_file(case / "tensors.safetensors")
    weights = meta.get("weights", {})
    dit = _dit(str((case / weights.get("dit", "../dit_single")).resolve()))
    vae = _vae(str((case / weights.get("vae", "../vae")).resolve()))
    fields = dict(
        sample_steps=meta["sampling_steps"],
        sample_shift=meta["shift"],
        text_guide_scale=meta["text_guide_scale"],
        audio_guide_scale=meta["audio_guide_scale"],
        seed=meta["seed"],
        frame_num=meta["frame_num"],
        motion_frame=meta["motion_frame"],
        max_frames=meta["max_frames_num"],
        mode=meta["mode"],
        color_correction_strength=meta["color_correction_strength"],
        bucket=meta.get("bucket_table_used") or meta["size_bucket_name"],
    )
    settings = GenerationSettings(**{**fields, **overrides})
    audio = tuple(
        tensors[k] for k in sorted(k for k in tensors if k.startswith("full_audio_embedding"))
    )
    inputs = GenerationInputs(
        cond=Image.open(case / "cond_image.png").convert("RGB"),
        audio=audio,
        context=tensors["stub_t5_context"],
        context_null=tensors["stub_t5_context_null"],
    )
    clip_seen: list[torch.Tensor] = []

    def clip_encode(image: torch.Tensor) -> torch.Tensor:
        clip_seen.append(image.clone())
        return tensors["stub_clip_features"]

    return meta, tensors, dit, vae, settings, inputs, clip_encode, clip_seen


def _run(case: Path, **overrides):
    meta, tensors, dit, vae, settings, inputs, clip_encode, clip_seen = _setup(case, **overrides)
    traced: dict[str, torch.Tensor] = {}
    steps: list = []

    def trace(name: str, t: torch.Tensor) -> None:
        traced[name] = t.detach().clone().cpu()

    chunks = list(generate(dit, vae, clip_encode, inputs, settings, on_step=steps.append, trace=trace))
    return meta, tensors, traced, chunks, steps, clip_seen


def _tol(name: str) -> float:
    if name.startswith("final_video") or name.endswith((".decoded", ".color_in", ".color_out")):
        return VIDEO_ATOL
    return STEP_ATOL


@case_param
@pytest.mark.parametrize("batch_passes", [True, False], ids=["batched", "separate"])
def test_generation_matches_golden(case, batch_passes):
    meta, tensors, traced, chunks, steps, clip_seen = _run(case, batch_passes=batch_passes)

    # The RNG sequence: every draw, in order, bit-identical.
    assert len([k for k in traced if k.startswith("rng")]) == len(meta["rng_calls"])
    for call in meta["rng_calls"]:
        name = f"rng{call['index']}.{call['kind']}"
        assert torch.equal(traced[name], tensors[name]), name

    # Every other golden intermediate we trace (DiT inputs/outputs per step, y, VAE encodes, ...).
    compared = 0
    for name, want in tensors.items():
        if name.startswith(("rng", "stub_", "full_audio", "final_video")):
            continue
        assert name in traced, f"{name} not produced"
        got = traced[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        torch.testing.assert_close(got, want, atol=_tol(name), rtol=0, msg=name)
        compared += 1
    dit_calls = [k for k in traced if k.endswith(".out") and ".step" in k]
    assert len(dit_calls) == len(meta["dit_calls"])
    assert compared > 0

    # CLIP saw the condition image of each chunk.
    for i, img in enumerate(clip_seen):
        assert torch.equal(img, tensors[f"chunk{i}.clip_input"])

    # Streamed chunks reassemble into the reference's final video.
    assert len(chunks) == meta["n_chunks"]
    video = torch.cat([c.frames for c in chunks], dim=1)
    torch.testing.assert_close(video, tensors["final_video"], atol=VIDEO_ATOL, rtol=0)
    u8 = np.concatenate([c.frames_uint8 for c in chunks], axis=0)
    want_u8 = tensors["final_video_uint8"].numpy()
    assert u8.shape == want_u8.shape
    assert int(np.abs(u8.astype(np.int16) - want_u8.astype(np.int16)).max()) <= 1
    assert np.array_equal(to_uint8_frames(tensors["final_video"]), want_u8)

    starts = [c.first_frame for c in chunks]
    assert starts == [sum(c.frames.shape[1] for c in chunks[:k]) for k in range(len(chunks))]
    assert chunks[-1].is_last and all(c.total_frames == video.shape[1] for c in chunks)
    assert all(c.seed == meta["seed"] for c in chunks)
    assert len(steps) == meta["n_chunks"] * meta["sampling_steps"]


@case_param
def test_cancel_between_steps(case):
    meta, tensors, dit, vae, settings, inputs, clip_encode, _ = _setup(case)
    polls = []

    def should_cancel() -> bool:
        polls.append(1)
        return len(polls) > 1

    gen = generate(dit, vae, clip_encode, inputs, settings, should_cancel=should_cancel)
    with pytest.raises(GenerationCancelled):
        next(gen)
    assert len(polls) == 2


@case_param
def test_dubbing_frames_source(case):
    """A frame sequence whose every frame is the condition image reproduces the image run."""
    meta, tensors, dit, vae, settings, inputs, clip_encode, _ = _setup(case)
    image = inputs.cond
    as_iter = GenerationInputs(
        cond=iter([np.array(image)] * 3),
        audio=inputs.audio,
        context=inputs.context,
        context_null=inputs.context_null,
    )
    chunks = list(generate(dit, vae, clip_encode, as_iter, settings))
    video = torch.cat([c.frames for c in chunks], dim=1)
    torch.testing.assert_close(video, tensors["final_video"], atol=VIDEO_ATOL, rtol=0)


class _CountingVAE:
    """Counts the encodes reaching the real VAE (a wrapper, the VAE itself is untouched)."""

    def __init__(self, vae: WanVAE) -> None:
        self.vae, self.encoded_frames = vae, []

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.encoded_frames.append(int(video.shape[2]))
        return self.vae.encode(video)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent)


@pytest.mark.parametrize(
    "case", [c for c in CASES if json.loads((c / "meta.json").read_text())["mode"] == "streaming"],
    ids=lambda c: c.name,
)
def test_image_condition_latent_is_encoded_once_a_job(case):
    """The 81-frame condition clip depends on the condition frame alone: with an image it is encoded once,
    and every later chunk only encodes its motion frames; a video (new frame each chunk) encodes it each time.
    The golden check of `test_generation_matches_golden` covers the cached values themselves."""
    meta, tensors, dit, vae, settings, inputs, clip_encode, _ = _setup(case)
    counting = _CountingVAE(vae)
    chunks = list(generate(dit, counting, clip_encode, inputs, settings))
    n, f, m = len(chunks), meta["frame_num"], meta["motion_frame"]
    assert n >= 2
    assert counting.encoded_frames == [f, 1] + [m] * (n - 1)

    frames = np.array(inputs.cond)
    shifted = [np.roll(frames, shift=i, axis=1) for i in range(n * f)]  # every frame differs
    as_video = GenerationInputs(cond=iter(shifted), audio=inputs.audio, context=inputs.context,
                                context_null=inputs.context_null)
    counting = _CountingVAE(vae)
    list(generate(dit, counting, clip_encode, as_video, settings))
    assert counting.encoded_frames == [f, 1] + [f, m] * (n - 1)


def test_speaker_masks():
    one = speaker_masks((100, 130), (48, 64), 1)
    assert one.shape == (3, 6, 8) and bool(one.eq(1).all())
    two = speaker_masks((100, 130), (48, 64), 2)
    assert two.shape == (3, 6, 8)
    assert two[0, :, :4].sum() > 0 and two[0, :, 4:].sum() == 0
    assert two[1, :, 4:].sum() > 0 and two[1, :, :4].sum() == 0
    assert torch.equal(two[2], ((two[0] + two[1]) == 0).float())
    boxes = speaker_masks((64, 64), (64, 64), 2, bboxes=((0, 0, 64, 32), (0, 32, 64, 64)))
    assert bool(boxes[0, :, :4].eq(1).all()) and bool(boxes[1, :, 4:].eq(1).all()) and boxes[2].sum() == 0
    with pytest.raises(ValueError):
        speaker_masks((10, 10), (8, 8), 3)


def _first_case():
    clip = [c for c in CASES if json.loads((c / "meta.json").read_text())["mode"] == "clip"]
    if not clip:
        pytest.skip("no clip-mode generation case")
    return clip[0]


def _video(dit, vae, clip_encode, inputs, settings):
    return torch.cat([c.frames for c in generate(dit, vae, clip_encode, inputs, settings)], dim=1)


def test_two_speakers_batched_equals_separate():
    """Two speakers: cond/drop_text share a call, uncond (one silent speaker) runs alone."""
    meta, tensors, dit, vae, settings, inputs, clip_encode, _ = _setup(_first_case())
    a = inputs.audio[0]
    two = GenerationInputs(
        cond=inputs.cond,
        audio=(a, torch.flip(a, dims=[0]) * 0.5),
        context=inputs.context,
        context_null=inputs.context_null,
    )
    batched = _video(dit, vae, clip_encode, two, settings)
    separate = _video(dit, vae, clip_encode, two, GenerationSettings(**{**settings.__dict__, "batch_passes": False}))
    assert batched.shape == tensors["final_video"].shape
    torch.testing.assert_close(batched, separate, atol=VIDEO_ATOL, rtol=0)
    assert (batched - tensors["final_video"]).abs().max() > 1e-3  # the second speaker matters


@pytest.mark.parametrize(
    "overrides",
    [{"text_guide_scale": 1.0}, {"use_apg": True}, {"use_apg": True, "text_guide_scale": 1.0}, {"color_correction_strength": 0.0}],
    ids=["two_pass", "apg", "apg_two_pass", "no_color"],
)
def test_guidance_variants_run(overrides):
    meta, tensors, dit, vae, settings, inputs, clip_encode, _ = _setup(_first_case(), **overrides)
    traced: dict[str, torch.Tensor] = {}
    chunks = list(generate(dit, vae, clip_encode, inputs, settings, trace=lambda n, t: traced.__setitem__(n, t)))
    video = torch.cat([c.frames for c in chunks], dim=1)
    assert video.shape == tensors["final_video"].shape
    assert bool(torch.isfinite(video).all()) and float(video.abs().max()) <= 1.0
    branches = {k.split(".")[2] for k in traced if ".step" in k and k.endswith(".out")}
    assert branches == ({"cond", "drop_audio"} if settings.text_guide_scale == 1.0 else {"cond", "drop_text", "uncond"})
    if settings.color_correction_strength == 0.0:
        assert not any(k.endswith(".color_out") for k in traced)
        torch.testing.assert_close(video, traced["chunk0.decoded"], atol=0, rtol=0)
