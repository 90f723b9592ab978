"""The engine facade on the tiny model: loads through the strict loaders, generates, caches prompts."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.errors import EngineOOMError, WeightLoadError
from worker.engine.sampling.generation import GenerationSettings
from worker.engine.runtime import Engine, EngineOptions, EngineRequest, _bucket_scale
from testkit.tiny import ensure_tiny_checkpoint


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def engine(layout):
    return Engine.load(layout)


def request(seconds: float, **settings) -> EngineRequest:
    t = np.arange(int(16000 * seconds)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    base = dict(sample_steps=2, frame_num=17, motion_frame=5, mode="streaming", max_frames=1000, seed=3)
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
    from testkit.tiny import tiny_layout

    with pytest.raises(WeightLoadError, match=shard.name):
        Engine.load(tiny_layout(copy))


def test_a_repacked_bundle_replaces_shards_and_adapter(layout, tmp_path):
    from dataclasses import replace

    from tools.weights.repack import repack

    bundle = tmp_path / "dit-bf16.safetensors"
    repack(layout.dit_files, bundle, dtype="bfloat16", config_file=layout.dit_config)
    eng = Engine.load(replace(layout, dit_bundle=bundle))
    ref = Engine.load(layout)
    for (k, a), (_, b) in zip(sorted(eng.dit.state_dict().items()), sorted(ref.dit.state_dict().items())):
        torch.testing.assert_close(a, b.to(torch.bfloat16).to(a.dtype), rtol=0, atol=0, msg=k)


# ----------------------------------------------------------------------------- fp8 at run time


def _fp8_request(**settings) -> EngineRequest:
    """One clip chunk of a noisy image with colour matching off, so the frames show the DiT's output
    (a flat condition frame, colour-matched, renders the same frames whatever the DiT does)."""
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    base = dict(sample_steps=2, frame_num=17, motion_frame=5, mode="clip", seed=3, color_correction_strength=0.0)
    base.update(settings)
    return EngineRequest(
        cond=Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)),
        audio_tracks=(audio,),
        prompt="a person talks",
        negative_prompt="blurry",
        settings=GenerationSettings(**base),
    )


def _frames(eng: Engine, **settings) -> torch.Tensor:
    (chunk,) = eng.generate(_fp8_request(**settings))
    return chunk.frames


def _nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _block_linears(dit) -> dict[str, torch.nn.Module]:
    from worker.engine.kernels.fp8_linear import FP8Linear

    return {n: m for n, m in dit.named_modules() if n.startswith("blocks.") and isinstance(m, (torch.nn.Linear, FP8Linear))}


@pytest.fixture(scope="module")
def bundles(layout, tmp_path_factory):
    from tools.weights.repack import repack

    out = tmp_path_factory.mktemp("bundles")
    for dtype in ("float8_e4m3fn", "bfloat16"):
        repack(layout.dit_files, out / f"{dtype}.safetensors", dtype=dtype, config_file=layout.dit_config)
    return {"fp8": out / "float8_e4m3fn.safetensors", "bf16": out / "bfloat16.safetensors"}


def test_fp8_engine_keeps_the_bundles_fp8_block_linears_and_renders_close_to_fp32(layout, engine, bundles):
    from dataclasses import replace

    from worker.engine.formats.fp8 import FP8
    from worker.engine.kernels.fp8_linear import FP8Linear

    eng = Engine.load(replace(layout, dit_bundle=bundles["fp8"]), EngineOptions(quant="fp8", dtype="bfloat16"))
    linears = _block_linears(eng.dit)
    assert linears and all(isinstance(m, FP8Linear) and m.weight.dtype == FP8 for m in linears.values())
    # no dequantised copy held: the only tensors of an fp8 Linear are its fp8 weight, its row scales and bias
    for name, m in linears.items():
        tensors = dict(m.state_dict())
        assert set(tensors) == {"weight", "weight_scale", "bias"}, name
        assert tensors["weight_scale"].dtype == torch.float32 and tensors["bias"].dtype == torch.bfloat16
    assert not any(isinstance(m, FP8Linear) for n, m in eng.dit.named_modules() if not n.startswith("blocks."))

    bf16 = Engine.load(replace(layout, dit_bundle=bundles["bf16"]), EngineOptions(dtype="bfloat16"))
    ratio = _nbytes(eng.dit) / _nbytes(bf16.dit)
    # tiny dims: biases, norms and modulation tables are a third of the bytes, so 0.69 here (0.51 full size)
    assert 0.6 < ratio < 0.75, ratio

    # One chunk against the fp32 engine: frames in [-1, 1], relative L2 error measured 0.052 for fp8
    # blocks + a float32 rest (0.027 for the bf16 bundle alone, which this fp8 run also includes).
    want = _frames(engine)
    fp8 = Engine.load(replace(layout, dit_bundle=bundles["fp8"]), EngineOptions(quant="fp8"))
    got = _frames(fp8)
    err = float((got - want).norm() / want.norm())
    assert 0 < err < 0.1, err
    assert float((got - want).abs().max()) < 0.3


def test_fp8_dit_of_the_full_model_is_about_half_its_bf16_bytes():
    from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT
    from worker.engine.kernels.fp8_linear import convert_linears

    with torch.device("meta"):  # sizes only, nothing allocated
        dit = InfiniteTalkDiT(DiTConfig.full_size()).to(torch.bfloat16)
    bf16 = _nbytes(dit)
    convert_linears(dit)
    ratio = _nbytes(dit) / bf16
    assert 34 * 2**30 < bf16 < 36 * 2**30 and 0.5 < ratio < 0.52, (bf16 / 2**30, ratio)


def test_fp8_without_an_fp8_file_quantises_at_load_exactly_as_repack_does(layout, bundles):
    from dataclasses import replace

    from worker.engine.kernels.fp8_linear import FP8Linear

    at_load = Engine.load(layout, EngineOptions(quant="fp8"))  # float32 shards, quantised per row here
    from_bundle = Engine.load(replace(layout, dit_bundle=bundles["fp8"]), EngineOptions(quant="fp8"))
    a, b = _block_linears(at_load.dit), _block_linears(from_bundle.dit)
    assert a.keys() == b.keys() and all(isinstance(m, FP8Linear) for m in a.values())
    for name in a:
        assert torch.equal(a[name].weight.view(torch.uint8), b[name].weight.view(torch.uint8)), name
        assert torch.equal(a[name].weight_scale, b[name].weight_scale), name
    # a bf16 bundle with quant=fp8 is quantised at load too
    from_bf16 = Engine.load(replace(layout, dit_bundle=bundles["bf16"]), EngineOptions(quant="fp8"))
    assert all(isinstance(m, FP8Linear) for m in _block_linears(from_bf16.dit).values())


def test_quantising_at_load_uses_the_card_only_where_the_bf16_copy_fits():
    from worker.engine.runtime import _fits_on_device

    with torch.device("meta"):
        small = torch.nn.Linear(64, 64)
    assert _fits_on_device(small, torch.device("cpu"), torch.bfloat16) is False  # the host path, as before
    if torch.cuda.is_available():  # the GPU suite's cudatests part runs this branch
        free, _ = torch.cuda.mem_get_info()
        assert _fits_on_device(small, torch.device("cuda"), torch.bfloat16)
        with torch.device("meta"):
            huge = torch.nn.Linear(1 << 20, (free // (1 << 20)) + 1, bias=False)  # one more row than fits in bf16
        assert not _fits_on_device(huge, torch.device("cuda"), torch.bfloat16, headroom=0.5)


def _quanto_file(src_dit, path, *, drop: str | None = None, extra: dict | None = None):
    """A file laid out as optimum-quanto's `requantize` reads it: `<m>.weight._data` (fp8),
    `<m>.weight._scale` [out, 1], activation scales, everything else under its own name in bf16."""
    from safetensors.torch import save_file

    from worker.engine.kernels.fp8_linear import FP8Linear

    sd = {}
    for name, m in src_dit.named_modules():
        if isinstance(m, FP8Linear):
            sd[f"{name}.weight._data"] = m.weight
            sd[f"{name}.weight._scale"] = m.weight_scale[:, None].to(torch.bfloat16)
            sd[f"{name}.input_scale"] = torch.ones(())
            sd[f"{name}.output_scale"] = torch.ones(())
    fp8_names = {n for n, m in src_dit.named_modules() if isinstance(m, FP8Linear)}
    for key, t in src_dit.state_dict().items():
        if key.rsplit(".", 1)[0] in fp8_names and key.endswith((".weight", ".weight_scale")):
            continue
        sd[key] = t.to(torch.bfloat16) if t.is_floating_point() else t
    sd.update(extra or {})
    if drop:
        sd.pop(drop)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


@pytest.fixture(scope="module")
def quanto_source(engine):
    import copy

    from worker.engine.kernels.fp8_linear import convert_linears

    src = copy.deepcopy(engine.dit)
    # the blocks plus one Linear outside them: which modules are fp8 follows the file
    convert_linears(src, include=lambda n: n.startswith("blocks.") or n == "head.head")
    return src


def test_fp8_engine_reads_upstreams_quanto_file_as_stored(layout, quanto_source, tmp_path):
    from dataclasses import replace

    from worker.engine.formats.fp8 import FP8
    from worker.engine.kernels.fp8_linear import FP8Linear

    path = tmp_path / "infinitetalk_single_fp8.safetensors"
    _quanto_file(quanto_source, path)
    eng = Engine.load(replace(layout, quant_file=path), EngineOptions(quant="fp8"))
    src = dict(quanto_source.named_modules())
    fp8 = {n: m for n, m in eng.dit.named_modules() if isinstance(m, FP8Linear)}
    assert set(fp8) == {n for n, m in src.items() if isinstance(m, FP8Linear)} and "head.head" in fp8
    for name, m in fp8.items():
        assert m.weight.dtype == FP8 and torch.equal(m.weight.view(torch.uint8), src[name].weight.view(torch.uint8))
        torch.testing.assert_close(m.weight_scale, src[name].weight_scale.to(torch.bfloat16).float(), rtol=0, atol=0)
    assert _frames(eng).isfinite().all()


def test_fp8_quant_file_errors_name_the_file_and_the_key(layout, quanto_source, tmp_path):
    from dataclasses import replace

    missing = tmp_path / "missing.safetensors"
    _quanto_file(quanto_source, missing, drop="blocks.1.ffn.2.weight._scale")
    with pytest.raises(WeightLoadError) as err:
        Engine.load(replace(layout, quant_file=missing), EngineOptions(quant="fp8"))
    assert "missing.safetensors" in str(err.value) and "blocks.1.ffn.2.weight_scale" in str(err.value)

    stray = tmp_path / "stray.safetensors"
    _quanto_file(quanto_source, stray, extra={"blocks.0.no_such.weight._data": torch.zeros(2, 2).to(torch.float8_e4m3fn)})
    with pytest.raises(WeightLoadError) as err:
        Engine.load(replace(layout, quant_file=stray), EngineOptions(quant="fp8"))
    assert "stray.safetensors" in str(err.value) and "blocks.0.no_such.weight" in str(err.value)

    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(WeightLoadError) as err:
        Engine.load(replace(layout, quant_file=plain), EngineOptions(quant="fp8"))
    assert "plain.safetensors" in str(err.value) and "no fp8 weights" in str(err.value)

    with pytest.raises(WeightLoadError, match="gone.safetensors"):
        Engine.load(replace(layout, quant_file=tmp_path / "gone.safetensors"), EngineOptions(quant="fp8"))
    with pytest.raises(ValueError, match="quant"):
        Engine.load(layout, EngineOptions(quant="int4"))


def test_unbatched_passes_option_runs_one_dit_call_per_guidance_pass(layout, engine):
    unbatched = Engine.load(layout, EngineOptions(batch_passes=False))
    calls: dict[str, list[int]] = {"batched": [], "unbatched": []}
    frames = {}
    for name, eng in (("batched", engine), ("unbatched", unbatched)):
        hook = eng.dit.register_forward_pre_hook(lambda _m, args, name=name: calls[name].append(args[0].shape[0]))
        try:  # the request asks for batching; the engine option overrides it
            frames[name] = _frames(eng, text_guide_scale=5.0, audio_guide_scale=4.0, batch_passes=True)
        finally:
            hook.remove()
    steps, passes = 2, 3  # cond, no-text, no-text-no-audio
    assert calls["unbatched"] == [1] * steps * passes
    assert len(calls["batched"]) < len(calls["unbatched"]) and sum(calls["batched"]) == steps * passes
    torch.testing.assert_close(frames["unbatched"], frames["batched"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("text_scale,passes", [(1.0, 2), (5.0, 3)], ids=["two_pass", "three_pass"])
def test_guidance_every_runs_the_guidance_passes_on_every_kth_step_only(engine, text_scale, passes):
    """Observed at the DiT itself: the batch size of each call (guidance passes are batched)."""
    sizes: list[int] = []
    hook = engine.dit.register_forward_pre_hook(lambda m, args: sizes.append(int(args[0].shape[0])))
    try:
        def video(**extra) -> torch.Tensor:
            # a noisy frame and no colour matching, so the frames show what the DiT did
            req = request(1.0, sample_steps=4, text_guide_scale=text_scale, color_correction_strength=0.0, **extra)
            req = dataclasses.replace(req, cond=_fp8_request().cond)
            return torch.cat([c.frames for c in engine.generate(req)], dim=1)

        reused = video(guidance_every=2)
        n_chunks = len(sizes) // 4
        assert n_chunks >= 2 and sizes == [passes, 1, passes, 1] * n_chunks  # every chunk starts full
        sizes.clear()
        exact = video()
        assert sizes == [passes] * 4 * n_chunks
    finally:
        hook.remove()
    assert reused.shape == exact.shape and bool(torch.isfinite(reused).all())
    assert 0 < float((reused - exact).abs().max()) < 1.0  # approximate, not the same output
