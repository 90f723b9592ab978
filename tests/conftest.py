"""Shared fixtures: where the golden reference data lives."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_golden_dir() -> Path | None:
    """GOLDEN_DIR wins; otherwise the shared set beside the checkout."""
    env = os.environ.get("GOLDEN_DIR")
    if env:
        return Path(env)
    candidate = REPO_ROOT.parent / "shared" / "golden"
    return candidate if candidate.is_dir() else None


def golden_cases(predicate) -> list[Path]:
    """Case folders under the golden dir that satisfy `predicate(folder)`; used for parametrisation."""
    root = resolve_golden_dir()
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and predicate(p))


def is_generation_case(p: Path) -> bool:
    """A full-generation golden case (generate_clip / generate_streaming format), whatever its folder name."""
    if not all((p / name).is_file() for name in ("cond_image.png", "tensors.safetensors", "meta.json")):
        return False
    meta = json.loads((p / "meta.json").read_text())
    return "mode" in meta and "rng_calls" in meta


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    root = resolve_golden_dir()
    if root is None or not root.is_dir():
        pytest.skip("golden data not found: set GOLDEN_DIR or place it at ../shared/golden")
    return root
