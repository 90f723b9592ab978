"""The package layering holds by test, not by convention.

- Only the engine imports torch: every other module (worker, contract, configuration, infra, tools, client,
  and the engine's facade `worker.engine` with its settings and errors) imports with torch made unimportable.
- The engine depends on nothing in the worker outside `worker.engine`.
"""
from __future__ import annotations

import ast
import dataclasses
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


def test_the_engine_imports_without_pydantic_or_hydra():
    """The engine (torch, transformers, safetensors, numpy) runs on bare GPU bench machines: `contract.choices`
    is all it reads from the contract, and that must not pull in pydantic through the package."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('pydantic', 'hydra', 'omegaconf'): raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import worker.engine.sampling.generation, worker.engine.runtime, worker.engine.audio_io\n"
        "print('ok', 'pydantic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and out.stdout.split() == ["ok", "False"], out.stderr[-2000:]


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


# --------------------------------------------------------------------------------------------------------------
# One name per setting, one definition per constant, and who may import the worker (issue 20, the contract side)


# conf/ fields that are not engine settings, each with what it is for instead. Every other field of SamplerConf,
# ModelConf and GpuConf must be a field of the engine's settings under the same name, with the same value.
NOT_ENGINE_SETTINGS = {
    "sampler": {
        "name": "the preset's name (the job's `sampler`)",
        "shift_480": "yaml-only source of sample_shift for infinitetalk-480 (worker/resolve.py picks by size)",
        "shift_720": "yaml-only source of sample_shift for infinitetalk-720",
    },
    "model": {
        "name": "the variant's name",
        "kind": "which engine the worker builds (tiny or infinitetalk)",
        "max_speakers": "a job limit (worker/resolve.py)",
        "adapter": "names the adapter's files in conf/model (single | multi)",
        "dtype": "the CPU tier's dtype (worker/wiring.py engine_options)",
        "quant_dir": "folder of upstream's quant files (conf interpolation into quant_file)",
        "tts_dir": "Kokoro's folder (the TTS voice, loaded by the worker)",
        "isolation_path": "htdemucs weights for audio_isolation (loaded by the worker, EngineHolder.isolator)",
        "isolation_preload": "the worker loads the isolation model at start (worker/handler.py preload)",
        "weights": "what `infinitetalk weights fetch` downloads",
    },
    "gpu": {
        "name": "the tier's name",
        "dtype": "EngineOptions.dtype on GPU tiers (the CPU tier takes model.dtype)",
        "cuda_alloc_conf": "PYTORCH_CUDA_ALLOC_CONF of the worker process",
        "max_size": "a job limit (worker/resolve.py)",
        "quant": "the tier's choice of EngineOptions.quant: 'model' defers to model.quant (checked below)",
        "vram_gb": "sizing facts for infra",
        "runpod_pools": "infra: endpoint GPU pools",
        "runpod_gpu_type_ids": "infra: GPU type ids",
        "price_per_hour_usd": "cost estimates",
        "parallel": "the rank group the worker starts (worker/engine/parallel)",
    },
}


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_conf_settings_reach_the_engine_under_the_same_name():
    from PIL import Image

    from configuration import GpuConf, ModelConf, SamplerConf, compose_config
    from contract.choices import group_options
    from contract.job import parse_job_input
    from worker.engine import EngineOptions, EngineRequest, GenerationSettings
    from worker.engine.formats.layout import CheckpointLayout
    from worker.resolve import apply_job_overrides, build_request
    from worker.wiring import checkpoint_layout, engine_options

    engine = _fields(GenerationSettings) | _fields(EngineOptions) | _fields(CheckpointLayout) | _fields(EngineRequest)
    for group, schema in (("sampler", SamplerConf), ("model", ModelConf), ("gpu", GpuConf)):
        not_engine = NOT_ENGINE_SETTINGS[group]
        assert set(not_engine) <= _fields(schema), f"stale entries in NOT_ENGINE_SETTINGS[{group!r}]"
        renamed = _fields(schema) - set(not_engine) - engine
        assert not renamed, f"conf/{group} settings the engine's settings lack under that name: {sorted(renamed)}"

    # sampler presets -> GenerationSettings (+ the request's LoRA), through the worker's own resolution
    cfg = compose_config(env={})
    image = Image.new("RGB", (8, 8))
    compared = set()
    for preset_name in group_options("sampler"):
        preset = cfg.sampler_presets[preset_name]
        job = parse_job_input({"image": "/runpod-volume/a.png", "audio": "/runpod-volume/a.wav", "sampler": preset_name})
        request = build_request(cond=image, tracks=(), prompt="", negative_prompt="",
                                resolved=apply_job_overrides(cfg, job), bboxes=None)
        shared = _fields(SamplerConf) - set(NOT_ENGINE_SETTINGS["sampler"])
        for name in shared:
            got = getattr(request.settings, name) if name in _fields(GenerationSettings) else getattr(request, name)
            want = getattr(preset, name)
            assert got == (want if want is not None else ""), (preset_name, name, got, want)
            compared.add(name)
    assert {"sample_steps", "text_guide_scale", "audio_guide_scale", "guidance_every", "motion_frame",
            "color_correction_strength", "teacache_thresh", "lora_file"} <= compared

    # GPU tiers and model variants -> EngineOptions and the checkpoint layout, through the worker's wiring
    for tier in group_options("gpu"):
        for model in group_options("model"):
            c = compose_config([f"gpu={tier}", f"model={model}"], env={})
            options, layout = EngineOptions(**engine_options(c)), checkpoint_layout(c)
            for group, conf in (("gpu", c.gpu), ("model", c.model)):
                for name in _fields(type(conf)) - set(NOT_ENGINE_SETTINGS[group]):
                    want = getattr(conf, name)
                    if (group, name) == ("model", "quant") and c.gpu.quant != "model":
                        want = c.gpu.quant  # the tier decides the linears' precision
                    if name in _fields(EngineOptions):
                        got = getattr(options, name)
                        want = want if want is not None else ""
                    else:
                        got = getattr(layout, name)
                        want = Path(want) if want is not None else None
                    assert got == want, (tier, model, group, name, got, want)


def _py_files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


_NAME_OF_FPS = ("fps",)
_NAME_OF_RATE = ("rate", "sr", "sample_rate")


def _literal_strings(node: ast.AST) -> set[str] | None:
    """The strings of a literal tuple/list/set of string constants (or of a Literal[...] subscript), else None."""
    if isinstance(node, ast.Subscript) and getattr(node.value, "id", getattr(node.value, "attr", "")) == "Literal":
        node = node.slice
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return {e.value for e in node.elts}
    return None


def test_constants_and_choice_names_are_defined_once():
    """fps, the audio sample rate, sampler preset names and storage targets live in contract/choices.py only
    (preset and target names derived there from conf/); every other module imports them."""
    from contract.choices import OUTPUT_TARGETS, SAMPLER_PRESETS

    home = ROOT / "contract" / "choices.py"
    offenders = []
    files = _py_files("contract", "configuration", "worker", "client", "infra", "tools", "testkit", "bench")
    assert len(files) > 100
    for path in files:
        if path == home:
            continue
        rel = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            pairs: list[tuple[str, ast.AST]] = []
            if isinstance(node, ast.Assign):
                pairs = [(getattr(t, "id", getattr(t, "attr", "")), node.value) for t in node.targets]
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                pairs = [(getattr(node.target, "id", getattr(node.target, "attr", "")), node.value)]
            elif isinstance(node, ast.arguments):
                args = node.posonlyargs + node.args
                pairs = [(a.arg, d) for a, d in zip(args[len(args) - len(node.defaults):], node.defaults)]
                pairs += [(a.arg, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
            for name, value in pairs:
                low = name.lower()
                if isinstance(value, ast.Constant) and not isinstance(value.value, bool):
                    if value.value == 25 and any(k in low for k in _NAME_OF_FPS):
                        offenders.append(f"{rel}:{node.lineno if hasattr(node, 'lineno') else value.lineno} {name} = 25")
                    if value.value == 16000 and (low in _NAME_OF_RATE or any(k in low for k in ("rate", "sample_rate"))):
                        offenders.append(f"{rel}:{value.lineno} {name} = 16000")
            strings = _literal_strings(node)
            if strings and len(strings) >= 2 and (strings <= set(SAMPLER_PRESETS) or strings <= set(OUTPUT_TARGETS)):
                offenders.append(f"{rel}:{node.lineno} {sorted(strings)}")
    assert not offenders, offenders


def test_contract_configuration_client_infra_import_nothing_from_the_worker():
    """`farm-studio look`'s rule, by test: these packages never import back into the worker (tools may; the
    contract imports pydantic and the standard library only)."""
    offenders, contract_deps = [], set()
    files = _py_files("contract", "configuration", "client", "infra")
    assert len(files) > 30
    for path in files:
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if rel.name == "__init__":
            module += ".__init__"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [_absolute(module, node)]
            else:
                continue
            for target in targets:
                if target == "worker" or target.startswith("worker."):
                    offenders.append(f"{rel}: {target}")
                if rel.parts[0] == "contract" and target:
                    contract_deps.add(target.split(".")[0])
    assert not offenders, offenders
    assert contract_deps - set(sys.stdlib_module_names) <= {"pydantic", "contract", "__future__"}, contract_deps
