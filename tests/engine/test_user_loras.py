"""A job's own LoRAs on the tiny model (formats/user_loras.py, through Engine.generate): checked whole before any
weight changes, merged for the generation only, taken off bit-exactly however the generation ends."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from testkit.tiny import ensure_tiny_checkpoint, write_tiny_lora
from worker.engine.errors import LoraFitError
from worker.engine.formats.user_loras import check_user_loras, user_loras
from worker.engine.runtime import Engine
from tests.engine.test_runtime import request
from tests.engine.test_lora import tiny_dit


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same bits (0.0 vs -0.0 and NaN payloads count), not just equal values."""
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float64: torch.int64}
    return a.keys() == b.keys() and all(
        torch.equal(a[k].view(bits[a[k].dtype]), b[k].view(bits[b[k].dtype])) if a[k].dtype in bits else torch.equal(a[k], b[k])
        for k in a
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    write_tiny_lora(d / "style.safetensors", "fusionx", 101)
    write_tiny_lora(d / "other.safetensors", "lightx2v", 102)
    return d


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine.load(ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny"))


def textured(seconds: float):
    """The runtime tests' request on a noisy picture without colour correction: a flat one renders flat whatever
    the weights (the correction pulls every frame to its one colour)."""
    rng = np.random.default_rng(0)
    cond = Image.fromarray(rng.integers(0, 255, (160, 120, 3), dtype=np.uint8))
    return dataclasses.replace(request(seconds, color_correction_strength=0.0), cond=cond)


def frames(engine: Engine, **kw) -> np.ndarray:
    req = dataclasses.replace(textured(0.8), **kw)
    return np.concatenate([c.frames_uint8 for c in engine.generate(req)])


def test_user_loras_change_the_frames_only_while_given_and_leave_the_dit_as_it_was(engine, files):
    before_weights = state(engine.dit)
    plain = frames(engine)
    styled = frames(engine, user_loras=((str(files / "style.safetensors"), 1.5),))
    assert bit_equal(state(engine.dit), before_weights)  # off again, bit for bit
    assert np.abs(styled.astype(int) - plain.astype(int)).mean() > 0.5  # the LoRA changed the video (1.7 levels here)
    assert np.array_equal(frames(engine), plain)  # the next job without loras: the same frames as before
    assert engine.user_lora_stats.targets == [] and engine.user_lora_stats.merge_s == 0.0
    zero = frames(engine, user_loras=((str(files / "style.safetensors"), 0.0),))
    assert np.array_equal(zero, plain)  # scale 0 is no LoRA


def test_two_loras_stack_and_come_off_in_any_outcome(engine, files):
    before = state(engine.dit)
    two = ((str(files / "style.safetensors"), 0.7), (str(files / "other.safetensors"), -1.2))
    gen = engine.generate(dataclasses.replace(textured(1.5), user_loras=two))
    first = next(gen)  # one chunk out: the LoRAs are merged now
    assert first.frames_uint8.size and not bit_equal(state(engine.dit), before)
    assert engine.user_lora_stats.targets == [26, 50] and engine.user_lora_stats.merge_s >= 0
    gen.close()  # a cancelled or failed job closes its generation mid-way
    assert bit_equal(state(engine.dit), before)


def test_a_file_that_does_not_fit_is_refused_before_any_weight_changes(engine, files, tmp_path):
    bad = tmp_path / "wan22.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 64),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 2),
               "diffusion_model.blocks.40.self_attn.q.lora_down.weight": torch.zeros(2, 64),
               "diffusion_model.blocks.40.self_attn.q.lora_up.weight": torch.zeros(64, 2)}, str(bad))
    before = state(engine.dit)
    loras = ((str(files / "style.safetensors"), 1.0), (str(bad), 1.0))  # the good one first: nothing merged either
    with pytest.raises(LoraFitError) as info:
        list(engine.generate(dataclasses.replace(textured(0.5), user_loras=loras)))
    assert info.value.index == 1 and info.value.key == "diffusion_model.blocks.40.self_attn.q.lora_down.weight"
    assert str(info.value).startswith("loras[1]: key 'diffusion_model.blocks.40.")
    assert bit_equal(state(engine.dit), before)
    with pytest.raises(LoraFitError):
        engine.check_user_loras([str(bad)])


@pytest.mark.parametrize("tensors, key, words", [
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 63),
      "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 2)},
     "diffusion_model.blocks.0.self_attn.q.lora_down.weight", "does not fit"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 64),
      "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 3)},
     "diffusion_model.blocks.0.self_attn.q.lora_up.weight", "rank 3"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 64),
      "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(65, 2)},
     "diffusion_model.blocks.0.self_attn.q.lora_down.weight", "does not fit"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 64, dtype=torch.int32),
      "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 2)},
     "diffusion_model.blocks.0.self_attn.q.lora_down.weight", "not a float type"),
    ({"diffusion_model.blocks.0.self_attn.q.diff_b": torch.zeros(65)},
     "diffusion_model.blocks.0.self_attn.q.diff_b", "does not fit"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 64),
      "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 2),
      "diffusion_model.blocks.0.self_attn.q.alpha": torch.ones(2)},
     "diffusion_model.blocks.0.self_attn.q.alpha", "one number"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.full((2, 64), float("nan")),
      "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 2)},
     "diffusion_model.blocks.0.self_attn.q.lora_down.weight", "NaN"),
])
def test_wrong_shapes_dtypes_and_values_name_the_key_and_change_nothing(tmp_path, tensors, key, words):
    dit = tiny_dit()
    before = state(dit)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(LoraFitError) as info:
        with user_loras(dit, [(str(path), 1.0)]):
            pytest.fail("the body must not run")
    assert info.value.index == 0 and info.value.key == key and words in str(info.value), str(info.value)
    assert bit_equal(state(dit), before)


def test_the_body_failing_takes_the_loras_off(files):
    dit = tiny_dit(torch.bfloat16)
    before = state(dit)
    with pytest.raises(RuntimeError, match="boom"):
        with user_loras(dit, [(str(files / "style.safetensors"), 2.0), (str(files / "other.safetensors"), 1.0)]) as s:
            assert not bit_equal(state(dit), before) and s.targets == [26, 50]
            raise RuntimeError("boom")
    assert bit_equal(state(dit), before) and s.unmerge_s >= 0


def test_check_reads_headers_for_every_file(files):
    indexes = check_user_loras(tiny_dit(), [files / "style.safetensors", files / "other.safetensors"])
    assert [len(i.terms) for i in indexes] == [26, 50] and indexes[0].n_diff == 2


_NAME = st.text(alphabet="abcxyz_019", min_size=1, max_size=12)


@st.composite
def mangled_keys(draw) -> str:
    """A key of another model's LoRA, made from a real one: a block past the tiny DiT's last, a module or prefix it
    lacks, or a tensor suffix that is not a LoRA tensor."""
    from testkit.tiny import TINY_DIT
    from worker.engine.formats.lora import PREFIXES

    how = draw(st.sampled_from(["block", "module", "prefix", "suffix"]))
    block, module, suffix = "0", "self_attn.q", ".lora_down.weight"
    prefix = draw(st.sampled_from(list(PREFIXES) + [""]))
    if how == "block":
        block = str(draw(st.integers(TINY_DIT.num_layers, 10_000)))
    elif how == "module":
        # (a digit-only name could be ffn.0, a real module)
        module = draw(st.sampled_from(["self_attn", "cross_attn", "ffn", "audio_cross_attn"])) + "." + draw(
            _NAME.filter(lambda n: not n.isdigit()))
    elif how == "prefix":
        prefix = draw(_NAME.filter(lambda p: not p.startswith("lora_unet"))) + "."
    else:
        suffix = draw(st.sampled_from([".lora_down.", ".lora_mid.weight", ".hada_w1_a", ".weight", "."])) + draw(
            st.sampled_from(["", "x"]))
    return f"{prefix}blocks.{block}.{module}{suffix}"


@settings(max_examples=40, deadline=None)
@given(key=mangled_keys(), which=st.sampled_from(["down", "up"]))
def test_a_key_that_does_not_fit_is_the_key_named(tmp_path_factory, key, which):
    good = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 64),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 2),
            "diffusion_model.blocks.1.ffn.0.lora_down.weight": torch.ones(2, 64),
            "diffusion_model.blocks.1.ffn.0.lora_up.weight": torch.ones(128, 2)}
    tensors = dict(good)
    tensors.pop(f"diffusion_model.blocks.0.self_attn.q.lora_{which}.weight")
    tensors[key] = torch.zeros(2, 64)
    path = tmp_path_factory.mktemp("k") / "l.safetensors"
    save_file(tensors, str(path))
    dit = tiny_dit()
    before = state(dit)
    with pytest.raises(LoraFitError) as info:
        with user_loras(dit, [(str(path), 1.0)]):
            pytest.fail("the body must not run")
    assert info.value.index == 0 and info.value.key == key, (info.value.key, str(info.value))
    assert bit_equal(state(dit), before)
