"""Offload and block streaming: the streamed code path (run on the CPU here) equals the resident model."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.models.dit import InfiniteTalkDiT
from worker.engine.sampling.generation import GenerationSettings
from worker.engine.kernels.offload import BlockStreamer, OffloadedVAE, resident
from worker.engine.runtime import Engine, EngineOptions, EngineRequest
from testkit.tiny import TINY_DIT, ensure_tiny_checkpoint


def tiny_dit() -> InfiniteTalkDiT:
    with torch.device("meta"):
        dit = InfiniteTalkDiT(TINY_DIT)
    dit.to_empty(device="cpu")
    return dit.init_weights(torch.Generator().manual_seed(0)).eval().requires_grad_(False)


def dit_inputs(batch: int = 2, t_lat: int = 2):
    g = torch.Generator().manual_seed(1)
    c = TINY_DIT
    frames = 4 * (t_lat - 1) + 1
    return dict(
        latent=torch.randn(batch, 16, t_lat, 4, 6, generator=g),
        t=torch.tensor([700.0]),
        context=torch.randn(batch, 7, c.text_dim, generator=g),
        clip_fea=torch.randn(batch, 257, c.clip_dim, generator=g),
        y=torch.randn(batch, 20, t_lat, 4, 6, generator=g),
        audio=torch.randn(batch, 1, frames, c.audio_window, c.audio_layers, c.audio_dim, generator=g),
    )


@pytest.mark.parametrize("n", [1, 2, 5])
def test_streamed_blocks_give_the_resident_output_exactly(n):
    dit = tiny_dit()
    inputs = dit_inputs()
    with torch.inference_mode():
        want = dit(**inputs)
    streamed = copy.deepcopy(dit)
    streamer = BlockStreamer.attach(streamed, n, "cpu")
    assert streamed.block_stream is streamer and len(streamer.streamed) == min(n, TINY_DIT.num_layers)
    with torch.inference_mode():
        got = streamed(**inputs)
        again = streamed(**inputs)
    assert torch.equal(got, want) and torch.equal(again, want)
    assert streamer.copies == 2 * len(streamer.streamed)  # each streamed block copied once a forward


def test_streaming_never_writes_to_the_host_copy():
    dit = tiny_dit()
    streamer = BlockStreamer.attach(dit, 2, "cpu")
    before = {k: v.clone() for k, v in dit.blocks.state_dict().items()}
    with torch.inference_mode():
        dit(**dit_inputs(batch=1))
    for k, v in dit.blocks.state_dict().items():
        assert torch.equal(v, before[k])
    # host copies are the module's own parameters (no second copy of the streamed weights)
    host = streamer._host[1]
    assert host["self_attn.q.weight"] is dict(dit.blocks[1].named_parameters())["self_attn.q.weight"]


def test_resident_and_offloaded_vae_are_no_ops_on_cpu(tmp_path):
    from worker.engine.models.vae import VAEConfig, WanVAE, WanVAEModel

    model = WanVAEModel(VAEConfig(dim=8))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    vae = WanVAE(model)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    want = vae.encode(video)
    off = OffloadedVAE(vae, "cpu")
    assert torch.equal(off.encode(video), want)
    assert torch.equal(off.decode(want), vae.decode(want))
    with resident(model, "cpu") as m:
        assert m is model


def _frames(engine: Engine) -> np.ndarray:
    settings = GenerationSettings(sample_steps=2, text_guide_scale=1.0, audio_guide_scale=2.0, sample_shift=2.0, seed=4, frame_num=9,
                                  motion_frame=5, max_frames=20, mode="streaming")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    audio = (0.1 * np.sin(np.arange(12000) / 16000 * 2 * np.pi * 180)).astype(np.float32)
    req = EngineRequest(cond=image, audio_tracks=(audio,), prompt="p", negative_prompt="n", settings=settings)
    return np.concatenate([c.frames_uint8 for c in engine.generate(req)])


def test_engine_with_every_low_vram_option_renders_the_same_frames(tmp_path):
    layout = ensure_tiny_checkpoint(tmp_path / "tiny")
    plain = _frames(Engine.load(layout, EngineOptions()))
    low = Engine.load(layout, EngineOptions(offload_clip=True, offload_vae=True, offload_t5=True,
                                            stream_blocks=1))
    assert isinstance(low.vae, OffloadedVAE) and low.dit.block_stream is not None
    assert np.array_equal(_frames(low), plain)


def test_gpu_tier_config_reaches_the_engine_options():
    from configuration import compose_config
    from worker.wiring import engine_options

    opts = EngineOptions(**engine_options(compose_config(["gpu=rtx4090_24"])))
    assert (opts.offload_t5, opts.offload_clip, opts.offload_vae, opts.stream_blocks) == (True, True, True, 32)
    assert opts.batch_passes is False
    opts = EngineOptions(**engine_options(compose_config(["gpu=h100_80"])))
    assert opts.stream_blocks == 0 and not opts.offload_clip and opts.batch_passes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_streamed_blocks_on_cuda_match_resident():
    dit = tiny_dit()
    inputs = dit_inputs()
    with torch.inference_mode():
        want = copy.deepcopy(dit).cuda()(**inputs).cpu()
    BlockStreamer.attach(dit, 2, "cuda")
    with torch.inference_mode():
        got = dit(**inputs).cpu()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
