"""client/estimate.py: chunk counting, the cost model's direction, prices from conf/gpu."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.estimate import GPU_COUNTS, PARALLEL_EFFICIENCY, PRESETS, load_gpu_counts
from client.estimate import GPU_TIERS, count_chunks, estimate_job, format_estimate, load_gpu_prices, media_duration_s
from configuration import compose_config
from tests.client.conftest import MEDIA, REPO_ROOT


def test_chunks() -> None:
    assert count_chunks(10, "clip") == 1
    assert count_chunks(3.2, "streaming") == 1  # 80 frames fit the first chunk
    assert count_chunks(3.3, "streaming") == 2
    assert count_chunks(3.24 + 72 / 25, "streaming") == 2
    assert count_chunks(3.24 + 72 / 25 + 0.04, "streaming") == 3


def test_prices_come_from_conf_gpu() -> None:
    prices = load_gpu_prices(REPO_ROOT / "conf" / "gpu")
    counts = load_gpu_counts(REPO_ROOT / "conf" / "gpu")
    for tier, (_, price, _) in GPU_TIERS.items():
        gpu = compose_config([f"gpu={tier}"], env={}).gpu  # what Hydra composes, extended tiers included
        assert gpu.price_per_hour_usd == prices[tier] and price == pytest.approx(prices[tier] * GPU_COUNTS[tier])
        assert GPU_COUNTS[tier] == counts[tier] == gpu.parallel.ranks


def test_cost_model_direction() -> None:
    base = estimate_job(audio_s=10, mode="streaming", preset="quality")
    q = dict(mode="streaming", preset="quality")
    assert estimate_job(audio_s=10, size="infinitetalk-720", **q).gpu_seconds > base.gpu_seconds
    assert estimate_job(audio_s=10, mode="streaming", preset="turbo").gpu_seconds < base.gpu_seconds / 10
    assert estimate_job(audio_s=20, **q).gpu_seconds > base.gpu_seconds
    assert estimate_job(audio_s=10, tier="a100_80", **q).gpu_seconds > base.gpu_seconds
    assert estimate_job(audio_s=10, speakers=2, **q).gpu_seconds > base.gpu_seconds
    assert base.gpu_seconds_cold > base.gpu_seconds
    assert base.cost_usd == pytest.approx(base.gpu_seconds * 4.176 / 3600)
    # turbo at 480p on an H100 (an fp8 tier): 4 steps x 2 passes x 2.82 s x 1.962/2.81 + 3 s per chunk, 15 s per job
    fwd = 2.82 * 1.962 / 2.81
    t = estimate_job(audio_s=3, preset="turbo")
    assert (t.chunks, t.steps, t.passes) == (1, 4, 2) and t.gpu_seconds == pytest.approx(4 * 2 * fwd + 3 + 15)
    assert estimate_job(audio_s=3, preset="turbo", text_guide_scale=5).passes == 3
    light = estimate_job(audio_s=3, preset="lightning")  # no guidance: one pass a step
    assert (light.steps, light.passes) == (4, 1) and light.gpu_seconds == pytest.approx(4 * fwd + 3 + 15)
    # guidance every 2nd step: steps 0 and 2 run both passes, steps 1 and 3 one
    r = estimate_job(audio_s=3, preset="turbo", guidance_every=2)
    assert r.forwards_per_chunk == 6 and r.gpu_seconds == pytest.approx(6 * fwd + 3 + 15)
    # a bf16 tier pays the bf16 forward (A100: its speed factor 0.32 on the whole job)
    a = estimate_job(audio_s=3, preset="turbo", tier="a100_80")
    assert a.gpu_seconds == pytest.approx((4 * 2 * 2.82 + 3 + 15) / 0.32)
    assert estimate_job(audio_s=3, preset="quality", guidance_every=3).forwards_per_chunk == 14 * 3 + 26
    assert "guidance every 2 steps" in format_estimate(r)
    with pytest.raises(ValueError):
        estimate_job(audio_s=3, guidance_every=0)


def test_warnings_and_errors() -> None:
    assert "refuse" in format_estimate(estimate_job(audio_s=3, tier="rtx4090_24", size="infinitetalk-720"))
    with pytest.raises(ValueError):
        estimate_job(audio_s=3, tier="tpu")
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive"):
            estimate_job(audio_s=bad)


def test_defaults_cover_the_audio_with_the_guides_preset() -> None:
    est = estimate_job(audio_s=44.5)
    assert (est.steps, est.passes, est.video_seconds, est.truncated_s) == (8, 2, 44.5, 0.0)
    assert est.chunks == count_chunks(44.5, "streaming") > 1
    clip = estimate_job(audio_s=44.5, mode="clip")
    assert clip.video_seconds == pytest.approx(81 / 25) and clip.truncated_s == pytest.approx(44.5 - 81 / 25)
    assert "leaves out 41.3 s" in format_estimate(clip)


def test_cold_start_is_the_measured_load_not_scaled_by_gpu_speed() -> None:
    """bench/README.md section 9 (53.8 s to a ready engine) + section 10 (6.6 s first compiled forward)."""
    readme = (REPO_ROOT / "bench" / "README.md").read_text()
    assert "**53.8**" in readme and "6.57 s" in readme
    for tier, compiles in (("h100_80", True), ("h200_141", True), ("a100_80", True), ("l40s_48", False),
                           ("rtx4090_24", False)):
        est = estimate_job(audio_s=10, tier=tier)
        assert est.cold_start_s == pytest.approx(53.8 + (6.6 if compiles else 0.0))
        assert est.cost_usd_cold == pytest.approx(est.cost_usd + est.cold_start_usd)
    text = format_estimate(estimate_job(audio_s=10))
    # the three quantities and the price are each named; the whole-job cold figure is not called "cold start"
    assert "warm worker" in text and "cold-start surcharge" in text and "in all" in text and "$" in text
    assert "60 s cold-start surcharge" in text
    assert not re.search(r"cold start ≈ [0-9.]+ min", text)


def test_audio_duration(tmp_path: Path) -> None:
    d = media_duration_s(MEDIA / "speech_person1.wav")
    assert d is not None and 3 < d < 4.5
    assert media_duration_s(MEDIA / "portrait.png") in (None, pytest.approx(0.04, abs=0.05))
    (tmp_path / "x.wav").write_bytes(b"not audio")
    assert media_duration_s(tmp_path / "x.wav") is None


def test_gpu_counts_come_from_the_tiers_ranks() -> None:
    assert (GPU_COUNTS["h200_141x4"], GPU_COUNTS["h200_141x8"], GPU_COUNTS["h100_80x8"]) == (4, 8, 8)
    assert GPU_COUNTS["h100_80"] == GPU_COUNTS["h200_141"] == 1
    assert load_gpu_counts(REPO_ROOT / "no-such-dir") == {}  # a client without conf/ keeps its built-ins


MULTI = [("h200_141", "h200_141x4"), ("h200_141", "h200_141x8"), ("h100_80", "h100_80x8")]


@settings(max_examples=60, deadline=None)
@given(pair=st.sampled_from(MULTI), audio_s=st.floats(0.5, 600), preset=st.sampled_from(sorted(PRESETS)),
       size=st.sampled_from(["infinitetalk-480", "infinitetalk-720"]), speakers=st.sampled_from([1, 2]))
def test_several_gpus_bill_more_gpu_seconds_and_take_less_wall_time(pair, audio_s, preset, size, speakers) -> None:
    one_tier, many_tier = pair
    kw = dict(audio_s=audio_s, preset=preset, size=size, speakers=speakers)
    one, many = estimate_job(tier=one_tier, **kw), estimate_job(tier=many_tier, **kw)
    n = GPU_COUNTS[many_tier]
    assert many.gpus == n > 1 and one.gpus == 1
    assert many.gpu_seconds >= one.gpu_seconds  # scaling is never better than linear
    assert many.gpu_seconds == pytest.approx(one.gpu_seconds / PARALLEL_EFFICIENCY)
    assert many.wall_seconds < one.wall_seconds and many.wall_seconds == pytest.approx(many.gpu_seconds / n)
    assert many.price_per_hour_usd == pytest.approx(one.price_per_hour_usd * n)
    # what the job costs = billed GPU-seconds x the per-GPU price
    assert many.cost_usd == pytest.approx(many.gpu_seconds * one.price_per_hour_usd / 3600)
    assert many.cost_usd_cold > many.cost_usd and many.wall_seconds_cold > many.wall_seconds


def test_multi_gpu_estimate_text_states_the_assumption_and_wall_time() -> None:
    many = estimate_job(audio_s=30, tier="h200_141x4", preset="quality")
    text = format_estimate(many)
    assert "assumes 85% scaling, not measured" in text and "4 GPUs" in text and "wall time" in text
    assert "not measured" not in format_estimate(estimate_job(audio_s=30, tier="h200_141", preset="quality"))


def test_fp8_tiers_are_read_from_conf_like_prices(tmp_path) -> None:
    from client.estimate import _BUILTIN_FP8, FP8_TIERS, load_fp8_tiers

    assert FP8_TIERS == _BUILTIN_FP8  # the repo's conf/gpu says what the built-in list says
    (tmp_path / "base.yaml").write_text("name: base\nquant: fp8\n")
    (tmp_path / "child.yaml").write_text("defaults:\n  - base\n  - _self_\nname: child\n")
    (tmp_path / "plain.yaml").write_text("name: plain\nquant: model\n")
    assert load_fp8_tiers(tmp_path) == {"base", "child"}
    assert load_fp8_tiers(tmp_path / "missing") == _BUILTIN_FP8
