"""The package layering holds by test, not by convention.

- Only the engine imports torch: every other module (worker, contract, configuration, infra, tools, client,
  and the engine's facade `worker.engine` with its settings and errors) imports with torch made unimportable.
- The engine depends on nothing in the worker outside `worker.engine`.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENT_PYTHON = ROOT / ".venv-client" / "bin" / "python"

# Top-level packages scanned for the torch boundary. The engine's internals are excluded (they are where torch
# belongs), but its facade and plain settings are included: the worker imports those at module load.
PACKAGES = ("worker", "contract", "configuration", "infra", "client") + (("tools",) if (ROOT / "tools").is_dir() else ())
ENGINE_PUBLIC = ("worker.engine", "worker.engine.settings", "worker.engine.errors")

# Imports every module of PACKAGES under a meta-path finder that refuses torch; prints one JSON line of
# failures: [module, exception type, message, refused-torch?, missing top-level module or null].
_IMPORT_ALL = r"""
import importlib, importlib.abc, json, pkgutil, sys, traceback

class TorchRefused(ImportError):
    pass

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise TorchRefused(f"torch is not importable here (asked for {name!r})")
        return None

sys.meta_path.insert(0, Refuse())
packages, engine_public = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))

def wanted(name):
    if name.split(".")[-1] == "__main__":
        return False  # an entry point: importing it runs the program
    if name == "worker.engine" or name.startswith("worker.engine."):
        return name in engine_public
    return True

def refused_torch(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TorchRefused):
            return True
        exc = exc.__cause__ or exc.__context__
    return False

names = []
for top in packages:
    try:
        pkg = importlib.import_module(top)
    except ImportError as exc:
        names.append(top)
        continue
    names.append(top)
    for info in pkgutil.walk_packages(pkg.__path__, top + ".", onerror=lambda n: None):
        names.append(info.name)
failures, imported = [], []
for name in names:
    if not wanted(name):
        continue
    try:
        importlib.import_module(name)
        imported.append(name)
    except BaseException as exc:  # noqa: BLE001 - reported, judged by the test
        missing = getattr(exc, "name", None) if type(exc) is ModuleNotFoundError else None
        failures.append([name, type(exc).__name__, str(exc), refused_torch(exc), missing])
print(json.dumps({"failures": failures, "imported": imported, "torch_loaded": "torch" in sys.modules}))
"""


def _import_all(python: Path | str, packages: tuple[str, ...]) -> dict:
    out = subprocess.run(
        [str(python), "-c", _IMPORT_ALL, json.dumps(packages), json.dumps(ENGINE_PUBLIC)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_non_engine_modules_import_without_torch():
    result = _import_all(sys.executable, PACKAGES)
    refused = [f for f in result["failures"] if f[3]]
    assert not refused, f"modules that need torch outside the engine: {refused}"
    assert not result["torch_loaded"]
    # Anything else that failed must be a module whose own dependency is not installed in this environment
    # (the gradio UI lives in .venv-client); those are imported by the client leg below.
    other = [f for f in result["failures"] if f[1] != "ModuleNotFoundError" or not f[4]]
    assert not other, f"modules that fail to import for another reason: {other}"
    missing = {f[4].split(".")[0] for f in result["failures"]}
    assert missing <= {"gradio"}, f"modules needing packages absent from the worker venv: {result['failures']}"
    # the scan saw the packages it claims to cover, including the facade
    assert {"worker.engine", "worker.engine.settings", "worker.job", "contract.job", "configuration"} <= set(
        result["imported"])


@pytest.mark.skipif(not CLIENT_PYTHON.exists(), reason="no .venv-client (scripts/bootstrap.sh makes it)")
def test_client_modules_import_without_torch_in_the_client_env():
    result = _import_all(CLIENT_PYTHON, ("client", "contract"))
    assert not result["failures"], result["failures"]
    assert not result["torch_loaded"] and "client.ui" in result["imported"]


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")[: -node.level]
    return ".".join(base + ([node.module] if node.module else []))


def test_engine_imports_nothing_from_the_worker():
    offenders = []
    files = sorted((ROOT / "worker" / "engine").rglob("*.py"))
    assert len(files) > 30
    for path in files:
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if rel.name == "__init__":
            module += ".__init__"  # relative imports of a package resolve against the package itself
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [_absolute(module, node)]
            else:
                continue
            for target in targets:
                if (target == "worker" or target.startswith("worker.")) and not (
                    target == "worker.engine" or target.startswith("worker.engine.")
                ):
                    offenders.append(f"{rel}: {target}")
    assert not offenders, offenders
