"""Timestep schedule parity with every table of schedule/timesteps.json."""
from __future__ import annotations

import json

import pytest
import torch

from worker.engine.sampling.schedule import timesteps


def _tables(golden_dir):
    path = golden_dir / "schedule" / "timesteps.json"
    if not path.is_file():
        pytest.skip("schedule/timesteps.json not in golden set")
    return json.loads(path.read_text())["tables"]


def test_every_table_matches_exactly(golden_dir):
    tables = _tables(golden_dir)
    assert tables
    for name, tab in tables.items():
        got = timesteps(int(tab["steps"]), float(tab["shift"]))
        assert got.dtype == torch.float32, name
        want = torch.tensor(tab["timesteps"], dtype=torch.float32)
        assert got.shape == want.shape, name
        assert torch.equal(got, want), (name, got, want)


def test_endpoints_and_monotonic():
    t = timesteps(40, 7.0)
    assert t.shape == (41,)
    assert t[0].item() == 1000.0 and t[-1].item() == 0.0
    assert bool((t[:-1] > t[1:]).all())


def test_rejects_zero_steps():
    with pytest.raises(ValueError):
        timesteps(0, 5.0)
