"""Guidance combination (vanilla and APG) and the Euler step."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tests.conftest import golden_cases, is_generation_case
from worker.engine.sampling.guidance import (
    COND,
    DROP_AUDIO,
    DROP_TEXT,
    UNCOND,
    GuidanceConfig,
    Guider,
    apg_direction,
    euler_step,
)
from worker.engine.sampling.schedule import timesteps


CASES = golden_cases(is_generation_case)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_guided_euler_reproduces_next_step_input(case):
    """Golden DiT outputs of step s, combined and stepped, give the DiT input of step s+1 (motion frames aside)."""
    meta = json.loads((case / "meta.json").read_text())
    cfg = GuidanceConfig(meta["text_guide_scale"], meta["audio_guide_scale"])
    assert cfg.branches == (COND, DROP_TEXT, UNCOND)
    ts = timesteps(meta["sampling_steps"], meta["shift"])
    n_lat_motion = [1] + [1 + (meta["motion_frame"] - 1) // 4] * (meta["n_chunks"] - 1)
    with safe_open(case / "tensors.safetensors", "pt") as f:
        for c in range(meta["n_chunks"]):
            guider = Guider(cfg)
            for s in range(meta["sampling_steps"]):
                pre = f"chunk{c}.step{s}"
                assert torch.equal(f.get_tensor(f"{pre}.t"), ts[s : s + 1])
                x = f.get_tensor(f"{pre}.cond.x")
                for b in (DROP_TEXT, UNCOND):
                    assert torch.equal(f.get_tensor(f"{pre}.{b}.x"), x)
                preds = {b: f.get_tensor(f"{pre}.{b}.out")[0] for b in cfg.branches}
                nxt = euler_step(x, guider.combine(preds), ts[s : s + 1], ts[s + 1 : s + 2])
                m = n_lat_motion[c]
                nxt[:, :m] = x[:, :m]
                want = (
                    f.get_tensor(f"chunk{c}.step{s + 1}.cond.x")
                    if s + 1 < meta["sampling_steps"]
                    else f.get_tensor(f"chunk{c}.final_latent")
                )
                torch.testing.assert_close(nxt, want, atol=1e-5, rtol=0)


def _preds(seed=0, shape=(1, 4, 2, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k in (COND, DROP_TEXT, UNCOND, DROP_AUDIO)}


def test_vanilla_three_pass_formula():
    p = _preds()
    got = Guider(GuidanceConfig(5.0, 4.0)).combine(p)
    want = p[UNCOND] + 5.0 * (p[COND] - p[DROP_TEXT]) + 4.0 * (p[DROP_TEXT] - p[UNCOND])
    assert torch.equal(got, want)


def test_two_pass_when_text_scale_is_one():
    cfg = GuidanceConfig(1.0, 4.0)
    assert cfg.two_pass and cfg.branches == (COND, DROP_AUDIO)
    p = _preds()
    got = Guider(cfg).combine(p)
    assert torch.equal(got, p[DROP_AUDIO] + 4.0 * (p[COND] - p[DROP_AUDIO]))


def _apg_reference(diff, cond, running, momentum, thr):
    running = diff + momentum * running
    d = running.double()
    n = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)
    d = d * torch.clamp(thr / n, max=1.0)
    u = cond.double() / cond.double().flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)
    par = (d * u).flatten(1).sum(1).view(-1, 1, 1, 1, 1) * u
    return (d - par).float(), running


def test_apg_matches_independent_statement_over_steps():
    cfg = GuidanceConfig(5.0, 4.0, use_apg=True, apg_momentum=-0.75, apg_norm_threshold=3.0)
    guider = Guider(cfg)
    rt = ra = 0
    for step in range(3):
        p = _preds(step)
        got = guider.combine(p)
        dt, rt = _apg_reference(p[COND] - p[DROP_TEXT], p[COND], rt, -0.75, 3.0)
        da, ra = _apg_reference(p[DROP_TEXT] - p[UNCOND], p[COND], ra, -0.75, 3.0)
        torch.testing.assert_close(got, p[COND] + 4.0 * dt + 3.0 * da, atol=1e-5, rtol=0)
    guider.reset()
    p = _preds(7)
    dt, _ = _apg_reference(p[COND] - p[DROP_TEXT], p[COND], 0, -0.75, 3.0)
    da, _ = _apg_reference(p[DROP_TEXT] - p[UNCOND], p[COND], 0, -0.75, 3.0)
    torch.testing.assert_close(guider.combine(p), p[COND] + 4.0 * dt + 3.0 * da, atol=1e-5, rtol=0)


def test_apg_two_pass_and_orthogonality():
    cfg = GuidanceConfig(1.0, 4.0, use_apg=True, apg_norm_threshold=0.0)
    p = _preds(3)
    got = Guider(cfg).combine(p)
    term = (got - p[COND]) / 3.0
    assert abs(float((term.double() * p[COND].double()).sum())) < 1e-4
    direct = apg_direction(p[COND] - p[DROP_AUDIO], p[COND], None, 0.0)
    torch.testing.assert_close(term, direct, atol=1e-5, rtol=0)


def test_euler_step_shapes_and_value():
    ts = timesteps(2, 7.0)
    x = torch.ones(16, 3, 2, 2)
    pred = torch.full_like(x, 2.0)
    out = euler_step(x, pred, ts[0:1], ts[1:2])
    expected = 1.0 - 2.0 * float((ts[0] - ts[1]) / 1000)
    torch.testing.assert_close(out, torch.full_like(x, expected))
    assert euler_step(x[None], pred[None], ts[0:1], ts[1:2]).shape == (1, 16, 3, 2, 2)


def test_guidance_reuse_adds_the_last_full_steps_correction():
    cfg = GuidanceConfig(1.0, 2.0, guidance_every=2)
    assert [cfg.full_step(s) for s in range(5)] == [True, False, True, False, True]
    g = Guider(cfg)
    with pytest.raises(RuntimeError, match="no full guidance step"):
        g.reuse(_preds()[COND])
    first, second = _preds(1), _preds(2)
    guided = g.combine(first)
    # a step later the conditional prediction moved; the correction is the first step's
    assert torch.allclose(g.reuse(second[COND]), second[COND] + (guided - first[COND]))
    g.reset()  # a new chunk starts with a full step again
    with pytest.raises(RuntimeError):
        g.reuse(second[COND])


def test_guidance_reuse_off_keeps_every_step_full_and_rejects_zero():
    assert all(GuidanceConfig().full_step(s) for s in range(40))
    with pytest.raises(ValueError, match="guidance_every"):
        GuidanceConfig(guidance_every=0)
