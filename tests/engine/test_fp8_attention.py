"""fp8 attention (worker/engine/kernels/fp8_attention.py and the `fa3_fp8` / `fp8_reference` backends).

The quantisation math is checked on the CPU against float64 attention with an e4m3 emulation of what FA3's
fp8 kernel computes; the kernel itself only where CUDA, a Hopper GPU and `fa3-fwd` are present (skipped
with its reason otherwise).

Thresholds. One e4m3 rounding is off by at most 2^-4 of the value (3 mantissa bits, round to nearest).
An attention output or a DiT output that is further off than that from the bf16 path would mean that
rounding errors compound instead of averaging out, so 2^-4 is the bound for fp8 attention alone; with fp8
linears as well, two independent error sources of that size add in quadrature: sqrt(2) * 2^-4.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.kernels import attention as attn_mod
from worker.engine.kernels import fp8_attention as fa
from worker.engine.kernels.attention import attention, backend_available, get_attention_backend, resolve_backend
from worker.engine.kernels.fp8_linear import FP8Linear, convert_linears

from .test_offload import dit_inputs, tiny_dit

FP8_ATTENTION_MAX_REL_ERR = 2.0**-4
FP8_ATTENTION_AND_LINEARS_MAX_REL_ERR = math.sqrt(2) * 2.0**-4


@pytest.fixture(autouse=True)
def _restore_backend():
    before = get_attention_backend()
    yield
    attn_mod._backend = before


def _qkv(b=1, l=256, n=4, c=32, seed=0, offset=0.0, q_gain=1.0):
    """Gaussian q/k/v plus a per-(head, channel) offset shared by all tokens (what smoothing removes)."""
    g = torch.Generator().manual_seed(seed)

    def mk(gain=1.0):
        return gain * torch.randn(b, l, n, c, generator=g) + offset * torch.randn(1, 1, n, c, generator=g)

    return mk(q_gain), mk(), mk()


def _exact(q, k, v):
    return attention(q.double(), k.double(), v.double(), backend="sdpa")


def _fp8(q, k, v, **kw):
    quant = fa.quantize(q, k, v, **kw)
    return fa.finish(fa.emulate(quant), quant, torch.float32)


def test_smoothing_k_and_v_is_exact_in_exact_arithmetic():
    q, k, v = _qkv(offset=4.0, seed=1)
    ref = _exact(q, k, v)
    mk, mv = fa.token_mean(k).double(), fa.token_mean(v).double()
    smoothed = attention(q.double(), k.double() - mk, v.double() - mv, backend="sdpa") + mv
    assert fa.relative_error(smoothed, ref) < 1e-12


@settings(max_examples=25, deadline=None)
@given(amax=st.floats(1e-3, 1e4), b=st.integers(1, 2), n=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_head_scales_map_each_heads_amax_onto_448_and_round_within_half_a_step(amax, b, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 33, n, 8, generator=g)
    x = x / x.abs().amax(dim=(1, 3), keepdim=True) * amax
    s = fa.head_scales(x)
    assert s.shape == (b, n) and s.dtype == torch.float32
    torch.testing.assert_close(s, torch.full((b, n), amax / 448.0), rtol=1e-6, atol=0)
    x8 = fa.to_fp8(x, s)
    assert x8.dtype == fa.FP8 and x8.float().abs().amax() == 448.0
    back = x8.float() * s[:, None, :, None]
    normal = x.abs() >= 2.0**-6 * s[:, None, :, None]  # e4m3's normal range: relative rounding <= 2^-4
    assert bool(((back - x).abs() <= 2.0**-4 * x.abs() + 1e-30)[normal].all())


def test_an_all_zero_head_quantises_to_zero():
    x = torch.zeros(1, 8, 2, 4)
    x[:, :, 1] = 1.0
    s = fa.head_scales(x)
    assert s[0, 0] == 1.0 and bool((fa.to_fp8(x, s)[:, :, 0].float() == 0).all())


@pytest.mark.parametrize("offset", [0.0, 3.0, 10.0])
def test_fp8_attention_error_is_within_an_e4m3_rounding(offset):
    q, k, v = _qkv(offset=offset, seed=2)
    err = fa.relative_error(_fp8(q, k, v), _exact(q, k, v))
    assert 1e-3 < err < FP8_ATTENTION_MAX_REL_ERR, err  # above float32 noise: the rounding really happened


@settings(max_examples=10, deadline=None)
@given(offset=st.floats(2.0, 20.0), seed=st.integers(0, 2**16))
def test_smoothing_reduces_the_error_of_inputs_with_a_shared_offset(offset, seed):
    q, k, v = _qkv(l=128, offset=offset, seed=seed)
    ref = _exact(q, k, v)
    plain = fa.relative_error(_fp8(q, k, v, smooth_k=False, smooth_v=False), ref)
    smoothed = fa.relative_error(_fp8(q, k, v), ref)
    assert smoothed < plain


def test_emulation_with_exact_operands_only_rounds_p():
    """Unit descales and unquantised operands: the emulation is exact softmax attention except for P's e4m3."""
    q, k, v = _qkv(seed=3)
    one = torch.ones(1, 4)
    quant = fa.Quantized(q, k, v, one, one, one, None)
    err = fa.relative_error(fa.emulate(quant), _exact(q, k, v))
    assert 1e-4 < err < 2.0**-5  # P in [0, 1] rounded to e4m3, averaged over the keys


def test_reference_backend_quantises_self_attention_only():
    q, k, v = _qkv(l=64, seed=4)
    exact = attention(q, k, v, backend="sdpa")
    fp8 = attention(q, k, v, backend="fp8_reference")
    assert 1e-3 < fa.relative_error(fp8, exact) < FP8_ATTENTION_MAX_REL_ERR
    # cross-attention to a few context tokens stays exact (bf16 in production)
    short_k, short_v = k[:, :7], v[:, :7]
    torch.testing.assert_close(attention(q, short_k, short_v, backend="fp8_reference"),
                               attention(q, short_k, short_v, backend="sdpa"), atol=0, rtol=0)


def test_tiny_dit_with_fp8_attention_against_the_bf16_path():
    """The whole (tiny) DiT with every self-attention in emulated fp8, and with fp8 linears as well."""
    dit = tiny_dit().to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() and k != "t" else v for k, v in dit_inputs().items()}
    with torch.inference_mode():
        want = dit(**inputs).float()
        attn_mod._backend = "fp8_reference"
        attn_only = dit(**inputs).float()
        convert_linears(dit)
        for m in dit.modules():
            if isinstance(m, FP8Linear):
                m.fused = "always"  # the GPU's `_scaled_mm` arithmetic, on the CPU
        try:
            both = dit(**inputs).float()
        except RuntimeError as exc:  # torch < 2.13 runs only per-tensor scales in CPU `_scaled_mm`
            if "per-tensor" not in str(exc):
                raise
            for m in dit.modules():
                if isinstance(m, FP8Linear):
                    m.fused = False  # fp8 weights dequantised: the weights' share of the error only
            both = dit(**inputs).float()
    err_attn, err_both = fa.relative_error(attn_only, want), fa.relative_error(both, want)
    assert 0.002 < err_attn < FP8_ATTENTION_MAX_REL_ERR, err_attn
    assert err_attn < err_both < FP8_ATTENTION_AND_LINEARS_MAX_REL_ERR, err_both


def test_quantisation_traces_into_the_compiled_graph():
    """Under torch.compile the quantisation is traced with the block (so Inductor can fuse it into the
    kernels producing q/k/v): one graph, no break, same result as eager."""
    q, k, v = (t.bfloat16() for t in _qkv(l=64, seed=6))

    def block(q, k, v):
        return attention(q * 1.5, k, v, backend="fp8_reference") + 1.0

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), block(q, k, v), atol=0, rtol=0)


def test_auto_never_picks_fp8_attention_off_hopper():
    assert resolve_backend("auto", "cpu", fp8=True) == "sdpa"


def _fa3_ready() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device here"
    if torch.cuda.get_device_capability() [0] != 9:
        return f"FA3's fp8 kernel needs Hopper (9.x), this GPU is {torch.cuda.get_device_capability()}"
    if not backend_available("fa3_fp8"):
        return "fa3-fwd (module fa3_fwd_interface) is not installed"
    return None


def test_fa3_fp8_kernel_matches_its_emulation_on_hopper():
    reason = _fa3_ready()
    if reason:
        pytest.skip(reason)
    q, k, v = (t.cuda().bfloat16() for t in _qkv(b=2, l=4096, n=8, c=128, offset=2.0, seed=5))
    quant = fa.quantize(q, k, v)
    kernel = attn_mod._fa3_fp8_attention(quant.q, quant.k, quant.v, quant.q_descale, quant.k_descale,
                                         quant.v_descale, False, 128**-0.5)
    assert kernel.dtype == torch.bfloat16 and kernel.shape == q.shape
    exact = _exact(q.float(), k.float(), v.float())
    emulated = fa.finish(fa.emulate(quant), quant, torch.float32)
    got = attention(q, k, v, backend="fa3_fp8")
    kernel_err, emulated_err = fa.relative_error(got.float(), exact), fa.relative_error(emulated, exact)
    # The kernel rounds P against the running row maximum of its online softmax, the emulation against the
    # final one: the roundings differ element by element but are of one size, so the emulation predicts the
    # kernel's error (kernel vs emulation 2.1e-2 on an H200, 2026-12-04).
    assert kernel_err < FP8_ATTENTION_MAX_REL_ERR and 0.5 * emulated_err < kernel_err < 1.5 * emulated_err
    bf16 = attention(q, k, v, backend="fa3")
    assert fa.relative_error(bf16.float(), exact) < 1e-2
    assert resolve_backend("auto", "cuda", fp8=True) == "fa3_fp8" and resolve_backend("auto", "cuda") == "fa3"


def test_tiny_engine_frames_with_fp8_attention_against_the_exact_path(tmp_path):
    """Decoded frames of a whole (tiny) job: every self-attention in emulated fp8 against exact attention,
    same seeds and inputs. The frames' relative error stays within one e4m3 rounding as well."""
    import numpy as np
    from PIL import Image

    from worker.engine.sampling.generation import GenerationSettings
    from worker.engine.runtime import Engine, EngineOptions, EngineRequest
    from testkit.tiny import ensure_tiny_checkpoint

    layout = ensure_tiny_checkpoint(tmp_path / "tiny")
    t = np.arange(16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    settings = GenerationSettings(sample_steps=4, text_guide_scale=1.0, audio_guide_scale=2.0, sample_shift=2.0, frame_num=17,
                                  motion_frame=5, mode="streaming", max_frames=1000, seed=3, color_correction_strength=0.0)

    def frames(backend: str) -> torch.Tensor:
        engine = Engine.load(layout, EngineOptions(attention=backend))
        assert engine.attention_backend == backend
        req = EngineRequest(cond=image, audio_tracks=(audio,), prompt="a person talks", negative_prompt="",
                            settings=settings)
        return torch.cat([c.frames for c in engine.generate(req)], dim=1)

    exact, fp8 = frames("sdpa"), frames("fp8_reference")
    err = fa.relative_error(fp8, exact)
    assert 1e-4 < err < FP8_ATTENTION_MAX_REL_ERR, err
