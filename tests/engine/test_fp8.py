"""fp8 linears: the tiny DiT with fp8 block matrices stays within a stated error of the fp32 DiT, and both
fp8 file layouts (our repack bundle, quanto's `_data`/`_scale`) load into it exactly."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from worker.engine.models.dit import InfiniteTalkDiT
from worker.engine.errors import WeightLoadError
from worker.engine.formats.fp8 import FP8, dequantize_rows, load_fp8_state, quantize_rows
from worker.engine.kernels.fp8_linear import FP8Linear, convert_linears
from testkit.tiny import TINY_DIT

from .test_offload import dit_inputs, tiny_dit


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_row_quantisation_is_within_half_an_e4m3_step():
    w = torch.randn(32, 64) * torch.logspace(-3, 1, 32)[:, None]
    q, s = quantize_rows(w)
    assert q.dtype == FP8 and s.shape == (32,)
    back = q.float() * s[:, None]
    # e4m3 keeps 3 mantissa bits: |err| <= 2^-4 |w| for normal values, plus half a subnormal step
    assert bool(((back - w).abs() <= w.abs() * 2**-4 + s[:, None] * 2**-10).all())


def test_row_quantisation_in_place_gives_the_same_bytes_and_leaves_other_inputs_alone():
    """One quantiser serves the engine (a copy) and repack (its own float32 buffer, scaled in place)."""
    w = torch.randn(16, 48) * torch.logspace(-2, 2, 16)[:, None]
    w[3] = 0.0  # an all-zero row keeps scale 1
    kept = w.clone()
    q, s = quantize_rows(w)
    assert torch.equal(w, kept) and float(s[3]) == 1.0
    q2, s2 = quantize_rows(w.clone(), inplace=True)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)
    bf = w.to(torch.bfloat16)
    q3, _ = quantize_rows(bf, inplace=True)  # not float32: a copy, the input untouched
    assert torch.equal(bf, w.to(torch.bfloat16)) and q3.dtype == FP8
    torch.testing.assert_close(dequantize_rows(q, s), q.float() * s[:, None], rtol=0, atol=0)


def test_fp8_dit_relative_error_against_fp32():
    dit = tiny_dit()
    inputs = dit_inputs()
    fp8 = copy.deepcopy(dit)
    names = convert_linears(fp8)
    assert len(names) == TINY_DIT.num_layers * 15  # 4 self-attn, 6 cross-attn, 2 ffn, 3 audio cross-attn
    assert all(isinstance(fp8.get_submodule(n), FP8Linear) for n in names)
    with torch.inference_mode():
        want = dit(**inputs)
        got = fp8(**inputs)
    err = rel_err(got, want)
    # per weight at most 2^-4 relative (mean about 2^-6): measured about 1e-2 on this tiny DiT
    assert 0 < err < 0.03, err
    stored = sum(b.numel() * b.element_size() for n, b in fp8.named_buffers() if n.endswith(".weight"))
    assert stored == sum(dit.get_submodule(n).weight.numel() for n in names)  # one byte a weight


# The fp8 accuracy threshold, shared with bench/README.md section 8. One e4m3 value is off by at most half a
# step, 2^-4 of its magnitude; a matmul of per-row-scaled e4m3 operands averages such errors to a few percent
# (measured 3.8% here, 5.4% for the full-size 40-block DiT on an H100). An output error beyond the worst
# case of a single rounding would mean errors compound through the blocks instead of averaging out.
FP8_VS_BF16_MAX_REL_ERR = 2.0**-4


def test_fp8_dit_against_the_bf16_path_with_the_gpu_arithmetic():
    """bf16 DiT vs the same DiT with fp8 block Linears computed as on a GPU (`torch._scaled_mm` with per-row
    activation scales, run on the CPU here), same inputs."""
    dit = tiny_dit().to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() and k != "t" else v for k, v in dit_inputs().items()}
    fp8 = copy.deepcopy(dit)
    convert_linears(fp8)
    for m in fp8.modules():
        if isinstance(m, FP8Linear):
            m.fused = "always"
    with torch.inference_mode():
        want = dit(**inputs).float()
        got = fp8(**inputs).float()
        for m in fp8.modules():
            if isinstance(m, FP8Linear):
                m.fused = False
        weights_only = fp8(**inputs).float()
    err = rel_err(got, want)
    assert 0.005 < err < FP8_VS_BF16_MAX_REL_ERR, err  # above bf16's own noise: the fp8 path really ran
    # quantising the activations too adds error on top of the weights' alone, but stays the same order
    assert rel_err(weights_only, want) < err < 3 * rel_err(weights_only, want)


def _save_bundle_style(module, path, quanto: bool):
    sd = {}
    for name, t in module.state_dict().items():
        if name.endswith(".weight_scale"):
            base = name[: -len("_scale")]
            sd[base + ("._scale" if quanto else ".scale")] = t[:, None] if quanto else t
        elif name.endswith(".weight") and t.dtype == FP8:
            sd[name + ("._data" if quanto else "")] = t
            if quanto:
                sd[name[: -len(".weight")] + ".input_scale"] = torch.ones(())
        else:
            sd[name] = t.to(torch.bfloat16) if t.is_floating_point() else t
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


@pytest.mark.parametrize("quanto", [False, True], ids=["repack-bundle", "quanto"])
def test_fp8_files_load_into_a_meta_dit(tmp_path, quanto):
    src = tiny_dit()
    convert_linears(src)
    path = tmp_path / "dit_fp8.safetensors"
    _save_bundle_style(src, path, quanto)
    with torch.device("meta"):
        dit = InfiniteTalkDiT(TINY_DIT)
    convert_linears(dit)
    load_fp8_state(dit, [path], device="cpu", dtype=torch.float32)
    q = dit.blocks[0].ffn[0]
    assert isinstance(q, FP8Linear) and q.weight.dtype == FP8
    assert torch.equal(q.weight.view(torch.uint8), src.blocks[0].ffn[0].weight.view(torch.uint8))
    assert torch.equal(q.weight_scale, src.blocks[0].ffn[0].weight_scale)
    inputs = dit_inputs(batch=1)
    with torch.inference_mode():
        out = dit(**inputs)
        ref = src.to(torch.float32)(**inputs)
    assert rel_err(out, ref) < 0.02  # only the bf16 storage of the non-fp8 tensors differs


def test_fp8_file_missing_a_scale_is_refused(tmp_path):
    src = tiny_dit()
    convert_linears(src)
    sd = {k: v.contiguous() for k, v in src.state_dict().items() if not k.endswith("blocks.1.ffn.2.weight_scale")}
    sd = {(k[: -len("_scale")] + ".scale" if k.endswith(".weight_scale") else k): v for k, v in sd.items()}
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with torch.device("meta"):
        dit = InfiniteTalkDiT(TINY_DIT)
    convert_linears(dit)
    with pytest.raises(WeightLoadError, match="blocks.1.ffn.2.weight_scale"):
        load_fp8_state(dit, [tmp_path / "bad.safetensors"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_scaled_mm_matches_dequantised_path_on_gpu():
    lin = torch.nn.Linear(256, 128).cuda().to(torch.bfloat16)
    m = FP8Linear.from_linear(lin)
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    fused = m(x)
    m.fused = False
    assert rel_err(fused.float(), m(x).float()) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_accumulation_on_gpu_stays_within_the_fp8_bound_at_the_dits_widest_k(monkeypatch):
    """FFN2's K (13,824) is where skipping float32 promotion loses most; it must stay far inside fp8's own error."""
    from worker.engine.kernels import fp8_linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(13824, 1024).cuda().to(torch.bfloat16)
    m = FP8Linear.from_linear(lin)
    x = torch.randn(512, 13824, device="cuda", dtype=torch.bfloat16)
    exact = lin(x).float()
    monkeypatch.setattr(fp8_linear, "FAST_ACCUM", False)
    slow = m(x).float()
    monkeypatch.setattr(fp8_linear, "FAST_ACCUM", True)
    fast = m(x).float()
    assert rel_err(slow, exact) < 0.05 and rel_err(fast, exact) < 0.05
    assert rel_err(fast, slow) < 0.01  # the accumulation's own share: well under e4m3's 2**-4 rounding
