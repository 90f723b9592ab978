"""The attention seam: SDPA against an explicit float64 softmax, key-length masking, backend selection."""
from __future__ import annotations

import math

import pytest
import torch

from worker.engine.kernels import attention as attn_mod
from worker.engine.kernels.attention import (
    BACKENDS,
    AttentionBackendUnavailable,
    attention,
    backend_available,
    get_attention_backend,
    set_attention_backend,
)
from worker.engine.errors import EngineError


def reference_attention(q, k, v, k_lens=None, causal=False, scale=None):
    """Exact softmax attention in float64, one batch element at a time (the golden README's semantics)."""
    b, lq, n, c = q.shape
    scale = 1.0 / math.sqrt(c) if scale is None else scale
    out = torch.empty(b, lq, n, v.shape[-1], dtype=torch.float64)
    for i in range(b):
        kl = k.shape[1] if k_lens is None else int(k_lens[i])
        qi = q[i].double().transpose(0, 1)  # [N, Lq, C]
        ki = k[i, :kl].double().transpose(0, 1)
        vi = v[i, :kl].double().transpose(0, 1)
        s = qi @ ki.transpose(-1, -2) * scale
        if causal:
            s = s.masked_fill(~torch.ones(lq, kl, dtype=torch.bool).tril(), float("-inf"))
        out[i] = (s.softmax(-1) @ vi).transpose(0, 1)
    return out


def _qkv(b=2, lq=7, lk=11, n=3, c=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mk = lambda L: torch.randn(b, L, n, c, generator=g).to(dtype)  # noqa: E731
    return mk(lq), mk(lk), mk(lk)


@pytest.fixture(autouse=True)
def _restore_backend():
    before = get_attention_backend()
    yield
    attn_mod._backend = before


def test_default_backend_is_sdpa():
    assert get_attention_backend() == "sdpa"
    assert "sdpa" in BACKENDS and backend_available("sdpa")


def test_sdpa_matches_exact_softmax():
    q, k, v = _qkv()
    out = attention(q, k, v)
    assert out.shape == (2, 7, 3, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference_attention(q, k, v), atol=1e-6, rtol=0)


def test_softmax_scale():
    q, k, v = _qkv(seed=1)
    out = attention(q, k, v, softmax_scale=0.37)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, scale=0.37), atol=1e-6, rtol=0)


@pytest.mark.parametrize("as_list", [False, True])
def test_k_lens_masks_trailing_keys(as_list):
    q, k, v = _qkv(seed=2)
    lens = [11, 4]
    k_lens = lens if as_list else torch.tensor(lens, dtype=torch.int32)
    out = attention(q, k, v, k_lens=k_lens)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, k_lens=lens), atol=1e-6, rtol=0)
    # Garbage beyond the length must not leak into the result.
    k2, v2 = k.clone(), v.clone()
    k2[1, 4:] = 1e3
    v2[1, 4:] = -1e3
    torch.testing.assert_close(attention(q, k2, v2, k_lens=k_lens), out, atol=1e-6, rtol=0)


def test_full_k_lens_equals_no_mask():
    q, k, v = _qkv(seed=3)
    torch.testing.assert_close(attention(q, k, v, k_lens=torch.tensor([11, 11])), attention(q, k, v), atol=0, rtol=0)


def test_causal_square_and_with_lengths():
    q, k, v = _qkv(lq=9, lk=9, seed=4)
    torch.testing.assert_close(
        attention(q, k, v, causal=True).double(), reference_attention(q, k, v, causal=True), atol=1e-6, rtol=0
    )
    out = attention(q, k, v, causal=True, k_lens=[9, 5])
    torch.testing.assert_close(
        out.double(), reference_attention(q, k, v, causal=True, k_lens=[9, 5]), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="Lq == Lk"):
        attention(*_qkv(lq=3, lk=5), causal=True)


def test_output_dtype_follows_q_and_bf16_runs():
    q, k, v = _qkv(seed=5, dtype=torch.bfloat16)
    out = attention(q, k, v)
    assert out.dtype == torch.bfloat16
    ref = reference_attention(q.float(), k.float(), v.float())
    assert (out.double() - ref).abs().max() < 5e-2
    # float32 queries with bf16 values (RoPE output next to bf16 v) come back in float32.
    out32 = attention(q.float(), k.float(), v)
    assert out32.dtype == torch.float32


def test_shape_validation():
    q, k, v = _qkv()
    with pytest.raises(ValueError):
        attention(q[0], k[0], v[0])
    with pytest.raises(ValueError):
        attention(q, k[:, :, :2], v[:, :, :2])
    with pytest.raises(ValueError, match="k_lens"):
        attention(q, k, v, k_lens=[3])


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend("magic")
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(*_qkv(), backend="magic")


@pytest.mark.parametrize("name", ["flash_attn", "sageattention", "xformers", "fa3", "fa3_fp8"])
def test_missing_optional_backend_names_its_package(name):
    if backend_available(name):
        pytest.skip(f"{name} is installed here")
    with pytest.raises(AttentionBackendUnavailable, match=name.split("_")[0]) as info:
        set_attention_backend(name)
    assert isinstance(info.value, EngineError)
    assert get_attention_backend() == "sdpa"
    with pytest.raises(AttentionBackendUnavailable):
        attention(*_qkv(), backend=name)


@pytest.mark.parametrize("name", ["flash_attn", "sageattention", "xformers"])
def test_optional_backend_matches_sdpa_when_installed(name):
    if not backend_available(name) or not torch.cuda.is_available():
        pytest.skip(f"{name} or CUDA not available")
    q, k, v = (t.cuda() for t in _qkv(b=2, lq=64, lk=80, n=4, c=64, seed=6, dtype=torch.bfloat16))
    set_attention_backend(name)
    assert get_attention_backend() == name
    out = attention(q, k, v, k_lens=[80, 33])
    ref = attention(q, k, v, k_lens=[80, 33], backend="sdpa")
    assert (out.float() - ref.float()).abs().max() < 3e-2


def test_set_backend_roundtrip():
    set_attention_backend("sdpa")
    assert get_attention_backend() == "sdpa"


def _stand_in_sageattention(monkeypatch):
    """A stand-in for the third-party `sageattention` package (not our code): exact softmax in torch,
    with the package's call signature, so the seam around it can be exercised on a CPU."""
    import sys
    import types

    calls = []

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None):
        assert tensor_layout == "NHD"
        calls.append(q.shape)
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=is_causal, scale=sm_scale
        )
        return out.transpose(1, 2)

    module = types.ModuleType("sageattention")
    module.sageattn = sageattn
    monkeypatch.setitem(sys.modules, "sageattention", module)
    return calls


def test_external_kernel_is_one_opaque_operator_under_torch_compile(monkeypatch):
    """A compiled block must not trace into (or break on) a third-party kernel's Python: the seam wraps it
    in a custom operator with a shape-only fake, so `fullgraph=True` compiles and the kernel runs inside."""
    calls = _stand_in_sageattention(monkeypatch)
    q, k, v = _qkv(b=1, lq=6, lk=6, n=2, c=16, seed=7, dtype=torch.bfloat16)

    def block(q, k, v):
        return attention(q * 1.5, k, v, backend="sageattention") + 1.0

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    assert calls, "the external kernel did not run"
    want = attention(q * 1.5, k, v, backend="sdpa") + 1.0
    torch.testing.assert_close(out.float(), want.float(), atol=2e-2, rtol=0)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 6, 2, 16)


def test_auto_backend_is_sdpa_off_hopper():
    """`auto` (the H100/H200 tiers' setting) must fall back to SDPA wherever FA3/FA4 cannot run."""
    from worker.engine.kernels.attention import resolve_backend

    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("auto", None) == "sdpa"
    assert set_attention_backend("auto", "cpu") == "sdpa" and get_attention_backend() == "sdpa"
    assert resolve_backend("sdpa", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("fastest", "cpu")
