"""Fixtures shared by the weights tests: one tiny checkpoint in the published layouts per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    from testkit.tiny import ensure_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny") / "volume"
    ensure_tiny_checkpoint(root)
    return root


@pytest.fixture(scope="session")
def tiny_layout(tiny_root):
    from testkit.tiny import tiny_layout

    return tiny_layout(tiny_root)
