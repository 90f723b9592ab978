"""LoRA merging: the formula in float32, every key style, refusals, and the engine's lazy switching."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from worker.engine.models.dit import InfiniteTalkDiT
from worker.engine.errors import WeightLoadError
from worker.engine.formats.lora import (
    KOHYA_PREFIX,
    PREFIXES,
    index_lora,
    index_lora_keys,
    merge_lora,
    resolve_lora_path,
)
from testkit.tiny import TINY_DIT, TINY_LORAS, ensure_tiny_checkpoint

TARGETS = ("blocks.0.self_attn.q", "blocks.1.ffn.2", "blocks.0.cross_attn.k_img")


def tiny_dit(dtype=torch.float32) -> InfiniteTalkDiT:
    with torch.device("meta"):
        dit = InfiniteTalkDiT(TINY_DIT)
    dit.to_empty(device="cpu")
    dit.init_weights(torch.Generator().manual_seed(0))
    return dit.to(dtype).requires_grad_(False)


def lora_tensors(rank: int = 3, seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """Per target module: down [r, in], up [out, r], a diff for the bias and one for a norm."""
    g = torch.Generator().manual_seed(seed)
    dims = {"blocks.0.self_attn.q": (64, 64), "blocks.1.ffn.2": (64, 128), "blocks.0.cross_attn.k_img": (64, 64)}
    out = {}
    for m, (o, i) in dims.items():
        out[m] = {
            "down": torch.randn(rank, i, generator=g),
            "up": torch.randn(o, rank, generator=g),
            "bias": torch.randn(o, generator=g),
        }
    out["norm"] = {"diff": torch.randn(64, generator=g)}
    return out


def write(path, t, *, prefix="diffusion_model.", down=".lora_down.weight", up=".lora_up.weight", alpha=None,
          kohya=False):
    sd = {}
    for m, parts in t.items():
        if m == "norm":
            sd[f"{prefix}blocks.0.cross_attn.norm_k_img.diff"] = parts["diff"]
            continue
        name = f"{prefix}{m.replace('.', '_')}" if kohya else f"{prefix}{m}"
        sd[name + down] = parts["down"]
        sd[name + up] = parts["up"]
        sd[name + ".diff_b"] = parts["bias"]
        if alpha is not None:
            sd[name + ".alpha"] = torch.tensor(float(alpha))
    save_file(sd, str(path))
    return path


def expected(dit: InfiniteTalkDiT, t, scale: float, factor: float) -> dict[str, torch.Tensor]:
    p = dict(dit.named_parameters())
    exp = {}
    for m in TARGETS:
        exp[m + ".weight"] = p[m + ".weight"].float() + scale * factor * (t[m]["up"] @ t[m]["down"])
        exp[m + ".bias"] = p[m + ".bias"].float() + scale * t[m]["bias"]
    norm = "blocks.0.cross_attn.norm_k_img.weight"
    exp[norm] = p[norm].float() + scale * t["norm"]["diff"]
    return exp


@pytest.mark.parametrize(
    "style",
    [
        dict(alpha=6.0),  # lightx2v: lora_down/lora_up + alpha (alpha/rank = 2 here)
        dict(down=".lora_A.weight", up=".lora_B.weight"),  # FusioniX / PEFT matrices, no alpha
        dict(prefix="base_model.model.", down=".lora_A.weight", up=".lora_B.weight", alpha=3.0),
        dict(prefix="lora_unet_", kohya=True, alpha=1.5),  # kohya underscored module names
    ],
    ids=["lightx2v", "fusionx", "peft", "kohya"],
)
def test_merge_is_w_plus_scale_alpha_over_rank_up_down(tmp_path, style):
    t = lora_tensors(rank=3)
    path = write(tmp_path / "l.safetensors", t, **style)
    dit = tiny_dit()
    factor = style.get("alpha", 3.0) / 3.0
    want = expected(dit, t, 0.7, factor)
    untouched = dit.blocks[1].self_attn.q.weight.clone()
    report = merge_lora(dit, path, 0.7)
    assert report.low_rank == 3 and report.diffs == 4
    params = dict(dit.named_parameters())
    for k, v in want.items():
        torch.testing.assert_close(params[k], v, rtol=1e-6, atol=1e-6)
    assert torch.equal(dit.blocks[1].self_attn.q.weight, untouched)


def test_bf16_weights_are_merged_in_float32_and_rounded_once(tmp_path):
    t = lora_tensors()
    path = write(tmp_path / "l.safetensors", t, alpha=3.0)
    dit = tiny_dit(torch.bfloat16)
    w = dit.blocks[0].self_attn.q.weight.clone()
    merge_lora(dit, path, 1.0)
    m = "blocks.0.self_attn.q"
    want = (w.float() + t[m]["up"] @ t[m]["down"]).to(torch.bfloat16)
    assert torch.equal(dit.blocks[0].self_attn.q.weight, want)


def test_negative_scale_removes_the_lora(tmp_path):
    path = write(tmp_path / "l.safetensors", lora_tensors(), alpha=3.0)
    dit = tiny_dit()
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    merge_lora(dit, path, 1.3)
    merge_lora(dit, path, -1.3)
    for k, v in dit.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-5)


def test_foreign_or_broken_files_are_refused_before_any_weight_changes(tmp_path):
    dit = tiny_dit()
    before = dit.blocks[0].self_attn.q.weight.clone()
    foreign = tmp_path / "wan22.safetensors"
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 64),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 2),
            "diffusion_model.blocks.7.self_attn.q.lora_down.weight": torch.zeros(2, 64),  # no block 7
            "diffusion_model.blocks.7.self_attn.q.lora_up.weight": torch.zeros(64, 2),
        },
        str(foreign),
    )
    with pytest.raises(WeightLoadError, match="blocks.7"):
        merge_lora(dit, foreign)
    half = tmp_path / "half.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 64)}, str(half))
    with pytest.raises(WeightLoadError, match="only one of the two"):
        merge_lora(dit, half)
    odd = tmp_path / "odd.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.hada_w1_a": torch.zeros(2, 64)}, str(odd))
    with pytest.raises(WeightLoadError, match="not a LoRA tensor"):
        merge_lora(dit, odd)
    with pytest.raises(WeightLoadError, match="not found"):
        merge_lora(dit, tmp_path / "missing.safetensors")
    assert torch.equal(dit.blocks[0].self_attn.q.weight, before)


def test_tiny_checkpoint_ships_both_preset_loras(tmp_path):
    layout = ensure_tiny_checkpoint(tmp_path / "tiny")
    params = {k for k, _ in tiny_dit().named_parameters()}
    styles = {}
    for name in TINY_LORAS:
        idx = index_lora(tmp_path / "tiny" / "loras" / name, params)
        styles[name] = idx
        assert idx.style == "diffusion_model" and idx.n_low_rank == 2 * 12  # 4 self-attn, 6 cross-attn, 2 ffn projections a block
    assert layout.ckpt_dir.is_dir()
    assert resolve_lora_path("a.safetensors", "/x") == resolve_lora_path("/x/a.safetensors", None)
    assert resolve_lora_path("", "/x") is None


def test_engine_merges_at_load_and_switches_lazily(tmp_path):
    from worker.engine.runtime import Engine, EngineOptions

    root = tmp_path / "tiny"
    layout = ensure_tiny_checkpoint(root)
    turbo, fast = sorted(TINY_LORAS, key=lambda n: TINY_LORAS[n] != "lightx2v")
    plain = Engine.load(layout, EngineOptions(lora_dir=str(root / "loras")))
    assert plain.lora is None
    base = {k: v.clone() for k, v in plain.dit.state_dict().items()}

    eng = Engine.load(layout, EngineOptions(lora_dir=str(root / "loras"), lora_file=turbo, lora_scale=1.0))
    assert eng.lora == (str(root / "loras" / turbo), 1.0)
    q = "blocks.0.self_attn.q.weight"
    assert not torch.equal(eng.dit.state_dict()[q], base[q])
    turbo_q = eng.dit.state_dict()[q].clone()
    eng.use_lora(turbo, 1.0)  # same (file, scale): nothing happens
    assert torch.equal(eng.dit.state_dict()[q], turbo_q)
    eng.use_lora(fast, 0.5)
    assert eng.lora == (str(root / "loras" / fast), 0.5)
    eng.use_lora("", 1.0)
    assert eng.lora is None
    for k, v in eng.dit.state_dict().items():
        assert math.isclose(float((v - base[k]).abs().max()), 0.0, abs_tol=1e-5), k


def test_lora_merges_into_an_fp8_dit_within_fp8_rounding(tmp_path):
    from worker.engine.formats.fp8 import FP8
    from worker.engine.kernels.fp8_linear import FP8Linear
    from worker.engine.runtime import Engine, EngineOptions

    root = tmp_path / "tiny"
    layout = ensure_tiny_checkpoint(root)
    turbo = next(n for n in TINY_LORAS if TINY_LORAS[n] == "lightx2v")
    opts = dict(lora_dir=str(root / "loras"), lora_file=turbo, lora_scale=1.0)
    ref = Engine.load(layout, EngineOptions(**opts))  # float32, merged exactly
    eng = Engine.load(layout, EngineOptions(quant="fp8", **opts))
    fp8 = {n: m for n, m in eng.dit.named_modules() if isinstance(m, FP8Linear)}
    assert fp8 and all(m.weight.dtype == FP8 for m in fp8.values())
    want = ref.dit.state_dict()
    changed = 0
    for name, m in fp8.items():
        w, target = m.dequantized(torch.float32), want[name + ".weight"]
        # quantised at load, then requantised after the delta: two e4m3 roundings, 2**-4 relative each at most
        assert float((w - target).norm() / target.norm()) < 2 * 2**-4, name
        changed += 1
    assert changed == len(fp8)
    before = {n: m.dequantized(torch.float32) for n, m in fp8.items()}
    eng.use_lora("", 1.0)  # removal requantises once more; it lands on the plain model within rounding
    plain = Engine.load(layout, EngineOptions()).dit.state_dict()
    for name, m in fp8.items():
        w = m.dequantized(torch.float32)
        target = plain[name + ".weight"]
        assert float((w - target).norm() / target.norm()) < 3 * 2**-4, name
    assert any(not torch.equal(before[n], fp8[n].dequantized(torch.float32)) for n in fp8)


def test_a_lora_baked_into_the_bundle_is_not_merged_again(tmp_path):
    """`weights repack --lora` plus a preset naming the same LoRA: the weights carry it once."""
    from dataclasses import replace

    from worker.engine.errors import WeightLoadError
    from worker.engine.runtime import Engine, EngineOptions
    from tools.weights.repack import LoraSpec, repack

    root = tmp_path / "tiny"
    layout = ensure_tiny_checkpoint(root)
    turbo = next(n for n in TINY_LORAS if TINY_LORAS[n] == "lightx2v")
    loras = str(root / "loras")
    bundle = tmp_path / "dit-turbo.safetensors"
    repack(layout.dit_files, bundle, dtype="bfloat16", config_file=layout.dit_config,
           loras=[LoraSpec(root / "loras" / turbo, 1.0)])
    baked = Engine.load(replace(layout, dit_bundle=bundle), EngineOptions(lora_dir=loras, lora_file=turbo))
    once = Engine.load(layout, EngineOptions(lora_dir=loras, lora_file=turbo))  # merged once, at load
    q = "blocks.0.self_attn.q.weight"
    got, want = baked.dit.state_dict()[q].float(), once.dit.state_dict()[q].float()
    base = Engine.load(layout).dit.state_dict()[q].float()
    lora_size = float((want - base).abs().max())
    assert lora_size > 1e-3
    assert float((got - want).abs().max()) < 0.05 * lora_size  # bf16 rounding of the bundle, not a second merge
    assert baked.baked_loras == {turbo: 1.0} and baked.lora is None
    with pytest.raises(WeightLoadError, match="merged at strength 1.0"):
        baked.use_lora(turbo, 0.5)


MODULES = ("blocks.0.self_attn.q", "blocks.1.ffn.2", "blocks.0.cross_attn.k_img", "img_emb.proj.1", "head.head")
PARAMS = {m + ".weight" for m in MODULES} | {m + ".bias" for m in MODULES}


@settings(max_examples=200, deadline=None)
@given(
    module=st.sampled_from(MODULES),
    prefix=st.sampled_from(("", *PREFIXES)),
    pair=st.sampled_from(((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"))),
    alpha=st.booleans(),
    diff=st.sampled_from(("", ".diff", ".diff_b")),
    kohya=st.booleans(),
)
def test_the_one_key_parser_maps_every_style_to_the_parameter(module, prefix, pair, alpha, diff, kohya):
    """The engine's merge and `weights repack` share `index_lora_keys`: every key style it knows lands on the
    parameter it names, whatever prefix, pair naming, alpha or diff the file uses."""
    name = KOHYA_PREFIX + module.replace(".", "_") if kohya else prefix + module
    keys = [name + pair[0], name + pair[1]] + ([name + ".alpha"] if alpha else []) + ([name + diff] if diff else [])
    index = index_lora_keys("x.safetensors", keys, PARAMS)
    term = index.terms[module + ".weight"]
    assert (term.down, term.up) == (name + pair[0], name + pair[1])
    assert term.alpha == (name + ".alpha" if alpha else None)
    if diff == ".diff":
        assert term.diff == name + ".diff" and set(index.terms) == {module + ".weight"}
    elif diff == ".diff_b":
        assert index.terms[module + ".bias"].diff == name + ".diff_b"
    assert index.style == ("kohya" if kohya else "peft" if prefix == "base_model.model." else
                           "diffusion_model" if prefix else "plain")


@settings(max_examples=100, deadline=None)
@given(module=st.text(alphabet="abcxyz_.0123", min_size=1, max_size=20), prefix=st.sampled_from(("", *PREFIXES)))
def test_the_key_parser_refuses_keys_for_parameters_the_model_lacks(module, prefix):
    if module + ".weight" in PARAMS:
        return
    with pytest.raises(WeightLoadError):
        index_lora_keys("x.safetensors", [prefix + module + ".lora_down.weight", prefix + module + ".lora_up.weight"],
                        PARAMS)


# ---------------------------------------------------------------- reversible merges (a job's own LoRAs)

from worker.engine.formats.lora import check_lora_fit, merge_reversible, unmerge_reversible  # noqa: E402

_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _bits(module) -> dict[str, torch.Tensor]:
    return {k: (v.view(_BITS[v.dtype]) if v.dtype in _BITS else v).clone() for k, v in module.state_dict().items()}


@settings(max_examples=12, deadline=None)
@given(dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       scale=st.floats(0.05, 2).flatmap(lambda s: st.sampled_from([s, -s])), seed=st.integers(0, 2**16),
       alpha=st.sampled_from([None, 1.0, 8.0]))
def test_a_reversible_merge_comes_off_bit_for_bit(tmp_path_factory, dtype, scale, seed, alpha):
    """Subtracting the delta alone leaves rounding behind on bf16/fp16 (and float32); the kept fix-ups make the
    unmerge exact for any scale, so thousands of jobs never drift the base weights."""
    path = write(tmp_path_factory.mktemp("rev") / "l.safetensors", lora_tensors(seed=seed), alpha=alpha)
    dit = tiny_dit(dtype)
    before = _bits(dit)
    index = check_lora_fit(dit, path)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    record = merge_reversible(dit, index, tensors.__getitem__, scale)
    merged = _bits(dit)
    assert any(not torch.equal(merged[k], before[k]) for k in before) and len(record.merged) == len(index.terms)
    unmerge_reversible(dit, record, tensors.__getitem__)
    after = _bits(dit)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("size", [1e-3, 1.0])
def test_plain_subtraction_would_drift_a_bf16_model_which_the_fixups_prevent(tmp_path, size):
    """The reason for the fix-ups, measured: on bf16 a merge-then-subtract round trip changes some weights. A small
    delta leaves a few elements to keep one by one; one that dwarfs the weights keeps whole copies (smaller then)."""
    t = lora_tensors(rank=8, seed=3)
    for parts in t.values():
        for k in parts:
            parts[k] = parts[k] * size
    path = write(tmp_path / "l.safetensors", t)
    dit = tiny_dit(torch.bfloat16)
    before = _bits(dit)
    index = check_lora_fit(dit, path)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    record = merge_reversible(dit, index, tensors.__getitem__, 1.0)
    touched = sum(dict(dit.named_parameters())[t].numel() for t in index.terms)
    if size < 1:
        assert 0 < record.fixup_count < touched / 3 and record.whole_copies == 0  # a few would not round back
        assert record.host_bytes == 6 * record.fixup_count
    else:
        assert record.whole_copies > 0
    assert all(t.device.type == "cpu" for pair in record.fixups.values() for t in pair if t is not None)
    unmerge_reversible(dit, record, tensors.__getitem__)
    after = _bits(dit)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_a_merge_failing_midway_restores_what_it_changed(tmp_path):
    path = write(tmp_path / "l.safetensors", lora_tensors())
    dit = tiny_dit(torch.bfloat16)
    before = _bits(dit)
    index = check_lora_fit(dit, path)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    calls = {"n": 0}

    def flaky(key):  # the file's tensors, until the read of the fourth term's first one fails
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError("volume went away")
        return tensors[key]

    with pytest.raises(OSError):
        merge_reversible(dit, index, flaky, 1.5)
    after = _bits(dit)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_fp8_linears_are_restored_from_their_saved_bytes(tmp_path):
    from worker.engine.kernels.fp8_linear import FP8Linear, convert_linears

    dit = tiny_dit()
    convert_linears(dit)
    fp8 = {n: m for n, m in dit.named_modules() if isinstance(m, FP8Linear)}
    path = write(tmp_path / "l.safetensors", lora_tensors())
    index = check_lora_fit(dit, path)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    before = {n: (m.weight.view(torch.uint8).clone(), m.weight_scale.clone()) for n, m in fp8.items()}
    record = merge_reversible(dit, index, tensors.__getitem__, 1.0)
    assert record.fp8_backup  # the block Linears the LoRA touches are fp8 here
    unmerge_reversible(dit, record, tensors.__getitem__)
    for n, m in fp8.items():
        assert torch.equal(m.weight.view(torch.uint8), before[n][0]) and torch.equal(m.weight_scale, before[n][1])


def test_merge_lora_checks_every_shape_before_the_first_weight_changes(tmp_path):
    """A file whose last term has the wrong shape used to leave the earlier terms merged; now nothing changes."""
    t = lora_tensors()
    t["blocks.1.ffn.2"]["down"] = torch.zeros(3, 127)  # ffn.2 takes 128 inputs
    path = write(tmp_path / "l.safetensors", t)
    dit = tiny_dit()
    before = _bits(dit)
    with pytest.raises(WeightLoadError, match="does not fit") as info:
        merge_lora(dit, path)
    assert info.value.key == "diffusion_model.blocks.1.ffn.2.lora_down.weight"
    after = _bits(dit)
    assert all(torch.equal(after[k], before[k]) for k in before)
