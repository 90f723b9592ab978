"""ci/lint.sh: clean on the repository, and it does fail on a bad Dockerfile, a bad workflow or a stale mirror."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, VENV=str(VENV))
    return subprocess.run(["bash", str(root / "ci" / "lint.sh")], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_repository_is_lint_clean():
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "clean" in res.stdout


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for part in ("ci", "images", ".github"):
        shutil.copytree(REPO / part, root / part)
    return root


def test_lint_fails_on_each_kind_of_problem(tmp_path):
    root = _copy(tmp_path)
    assert _lint(root).returncode == 0

    dockerfile = root / "images" / "Dockerfile"
    good = dockerfile.read_text()
    dockerfile.write_text(good + "\nRUN cd /tmp && apt-get install curl\n")
    res = _lint(root)
    assert res.returncode == 1 and "hadolint: ./images/Dockerfile" in res.stderr
    dockerfile.write_text(good)

    wf = root / ".github" / "workflows" / "test.yml"
    wf.write_text(wf.read_text().replace("runs-on: ubuntu-24.04", "runs-on: ${{ matrix.nope }}", 1))
    res = _lint(root)
    assert res.returncode == 1
    assert "actionlint: .github/workflows/test.yml" in res.stderr
    assert "differs from ci/workflows/test.yml" in res.stderr
