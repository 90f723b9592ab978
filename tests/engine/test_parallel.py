"""Sequence parallelism (worker/engine/parallel/) against the single-process engine.

The tiny model runs on 2, 3 and 4 gloo ranks in CPU processes: every rank must end with the single-process
DiT output (Ulysses: the same bits; ring: float rounding, within 1e-5 relative), whole clip and
streaming generations, one and two speakers, must give the single-process frames, and the VAE decode and
encode split into row bands must give the whole-frame results. The pieces that need no
process group (token split arithmetic, online-softmax merge, audio routing) are property-tested directly.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.parallel_ranks import scenario, spawn_ranks, tiny_dit
from worker.engine.kernels.attention import attention
from worker.engine.parallel import ParallelContext, SequenceShard, attach_parallel, choose_method
from worker.engine.parallel.ring import block_attention, merge

DIT_JOBS = [(m, f"dit.{s}") for m in ("ulysses", "ring") for s in (1, 2)]
JOBS = {
    2: DIT_JOBS
    + [("auto", f"gen.{mode}.{s}") for mode in ("clip", "streaming") for s in (1, 2)]
    + [("ring", "gen.streaming.2"), ("auto", "vae.5"), ("auto", "enc.5"), ("auto", "gen.streaming.2.vae")]
    + [("auto", "dit.2.fp8"), ("auto", "gen.streaming.1.features")],  # fp8 linears; APG + reuse + TeaCache
    # 4 heads over 3 ranks: ring; 7 latent rows over 3 ranks: bands of 3, 2, 2
    3: [("auto", "dit.1"), ("auto", "dit.2"), ("auto", "gen.clip.2"), ("auto", "vae.7"), ("auto", "enc.7")],
    4: DIT_JOBS + [("auto", "gen.streaming.2"), ("auto", "gen.clip.1")],
}
CASES = [(w, m, n) for w, jobs in JOBS.items() for m, n in jobs]


@functools.lru_cache(maxsize=None)
def _reference(name: str):
    return scenario(ParallelContext(), name)


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    cache: dict[int, list[dict]] = {}

    def get(world: int) -> list[dict]:
        if world not in cache:
            cache[world] = spawn_ranks(world, tmp_path_factory.mktemp(f"world{world}"), JOBS[world])
        return cache[world]

    return get


@pytest.mark.parametrize("world,method,name", CASES, ids=[f"{w}-{m}-{n}" for w, m, n in CASES])
def test_ranks_match_single_process(rank_results, world, method, name):
    ref = _reference(name)
    exact = choose_method(method, tiny_dit().config.num_heads, world) == "ulysses" and not name.endswith(".vae")
    for rank, results in enumerate(rank_results(world)):
        got = results[(method, name)]
        if name.startswith(("vae", "enc")):  # banded decode / encode: the convolutions' own rounding only
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        elif name.startswith("dit"):
            assert got.shape == ref.shape and got.dtype == torch.float32
            rel = float((got - ref).abs().max() / ref.abs().max())
            assert rel <= 1e-5, f"rank {rank}: relative difference {rel}"
            if exact:  # Ulysses runs the very same attention call per head: no rounding difference at all
                assert torch.equal(got, ref), f"rank {rank}"
        else:
            assert got["chunks"] == ref["chunks"] and (name.startswith("gen.clip") or ref["chunks"] > 1)
            if exact:
                assert torch.equal(got["frames"], ref["frames"]), f"rank {rank}"
            else:  # ring's (or the banded VAE's) rounding passes through the sampler, the VAE and the next
                # chunks (the golden tests' video tolerance)
                torch.testing.assert_close(got["frames"], ref["frames"], atol=1e-3, rtol=0)
            diff = np.abs(got["uint8"].astype(int) - ref["uint8"].astype(int)).max()
            # ring: float rounding may move a truncated byte by one
            assert diff <= (0 if exact else 1), f"rank {rank}: uint8 frames differ by {diff}"


def test_second_speaker_changes_the_output():
    """The two-speaker cases exercise the speaker map (else its reduction would be untested)."""
    one, two = _reference("dit.1"), _reference("dit.2")
    assert one.shape == two.shape and float((one - two).abs().max()) > 1e-3


# ---------------------------------------------------------------------- no process group needed


def test_choose_method():
    assert choose_method("auto", 40, 8) == "ulysses" and choose_method("auto", 40, 3) == "ring"
    assert choose_method("ring", 40, 8) == "ring"
    with pytest.raises(ValueError, match="do not divide"):
        choose_method("ulysses", 40, 3)
    with pytest.raises(ValueError, match="unknown parallel method"):
        choose_method("tensor", 40, 2)
    with pytest.raises(ValueError, match="not in a world"):
        ParallelContext(rank=2, world=2)


def test_single_process_context_is_the_plain_path():
    ctx = ParallelContext.from_process_group()
    assert (ctx.rank, ctx.world, ctx.is_parallel) == (0, 1, False)
    dit = attach_parallel(tiny_dit(), ctx)
    assert dit.parallel is None


def test_block_streaming_and_bad_ulysses_are_refused():
    dit = tiny_dit()
    dit.block_stream = lambda blocks: blocks
    with pytest.raises(ValueError, match="block streaming"):
        attach_parallel(dit, ParallelContext(rank=0, world=2))
    with pytest.raises(ValueError, match="do not divide"):
        attach_parallel(tiny_dit(), ParallelContext(rank=0, world=3, method="ulysses"))


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 200), world=st.integers(1, 9), frame_tokens=st.integers(1, 30))
def test_token_split_covers_the_sequence_once(length, world, frame_tokens):
    x = torch.arange(length, dtype=torch.float32)[None, :, None]
    shards = [SequenceShard(ParallelContext(rank=r, world=world), length, frame_tokens, 8) for r in range(world)]
    assert all(s.chunk * world >= length and s.chunk == math.ceil(length / world) for s in shards)
    parts = [s.split(x) for s in shards]
    assert all(p.shape == (1, shards[0].chunk, 1) for p in parts)
    joined = torch.cat(parts, dim=1)
    assert torch.equal(joined[:, :length], x) and not joined[:, length:].any()
    assert sum(s.valid for s in shards) == length


@settings(max_examples=40, deadline=None)
@given(
    lk=st.integers(1, 40),
    cuts=st.lists(st.integers(1, 39), max_size=5),
    lq=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_online_softmax_merge_is_full_attention(lk, cuts, lq, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, lq, 3, 8, generator=g, dtype=torch.float64) * 3
    k = torch.randn(2, lk, 3, 8, generator=g, dtype=torch.float64) * 3
    v = torch.randn(2, lk, 3, 8, generator=g, dtype=torch.float64)
    edges = sorted({0, lk, *[c for c in cuts if c < lk]})
    acc = lse = None
    for a, b in zip(edges, edges[1:]):
        out, part_lse = block_attention(q, k[:, a:b], v[:, a:b])
        acc, lse = merge(acc, lse, out, part_lse)
    torch.testing.assert_close(acc, attention(q, k, v), atol=1e-10, rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(frames=st.integers(1, 5), frame_tokens=st.integers(1, 12), world=st.integers(1, 6), seed=st.integers(0, 999))
def test_audio_routing_pairs_each_token_with_its_frame(frames, frame_tokens, world, seed):
    """Chunk edges anywhere (inside frames, past the end): every token still sees its own frame's audio."""
    g = torch.Generator().manual_seed(seed)
    b, n, d, a = 2, 2, 4, 3
    length = frames * frame_tokens
    q = torch.randn(b, length, n, d, generator=g)
    k = torch.randn(b * frames, a, n, d, generator=g)
    v = torch.randn(b * frames, a, n, d, generator=g)
    ref = attention(q.reshape(b * frames, frame_tokens, n, d), k, v).reshape(b, length, n, d)
    parts = []
    for r in range(world):
        shard = SequenceShard(ParallelContext(rank=r, world=world), length, frame_tokens, n)
        out = shard.audio_attention(shard.split(q), k, v, frames)
        assert not out[:, shard.valid :].any()
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, dim=1)[:, :length], ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("rows,world", [(60, 8), (7, 3), (4, 4), (9, 2)])
def test_vae_band_sizes(rows, world):
    from worker.engine.parallel.vae import band_sizes

    sizes = band_sizes(rows, world)
    assert sum(sizes) == rows and len(sizes) == world and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_features_scenario_really_skips_blocks(monkeypatch):
    """The `.features` generation compared above exercises TeaCache's skip path (and guidance reuse):
    fewer block runs than DiT calls."""
    import tests.engine.parallel_ranks as ranks

    counts = {"forward": 0, "blocks": 0}
    build = ranks.tiny_dit

    def counted():
        dit = build()
        dit.register_forward_pre_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
        dit.blocks[0].register_forward_pre_hook(lambda *_: counts.__setitem__("blocks", counts["blocks"] + 1))
        return dit

    monkeypatch.setattr(ranks, "tiny_dit", counted)
    ranks.run_generation(ParallelContext(), "streaming", 1, features=True)
    assert 0 < counts["blocks"] < counts["forward"]
