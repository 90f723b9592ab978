"""Shared pieces of the reliability suite (issue #9).

- `secrets`: every test that sets a credential registers it here; after the test, everything
  pytest captured for it (stdout, stderr, log records, subprocess output on the inherited fds)
  plus the files and outputs the test handed over is scanned, and a hit fails the test.
- `tiny_cache`: one tiny-model cache for the session (random weights made on the spot).
- `make_ctx`: a worker context on the tiny model with its own work and output folders.
- `EXAMPLES` / `MEDIA` / `example()`: the example payloads with absolute media paths.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Two cores shared by the whole suite (and by other suites running beside it): one torch thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
MEDIA = EXAMPLES / "media"
PORTRAIT = MEDIA / "portrait.png"
SPEECH = MEDIA / "speech_person1.wav"

# Fast tiny-model settings: 1 step, short chunks.
FAST = {"sampler": "turbo", "sample_steps": 1}


def example(name: str) -> dict:
    payload = json.loads((EXAMPLES / name).read_text())["input"]

    def fix(ref: Any) -> Any:
        return str(EXAMPLES / ref) if isinstance(ref, str) and ref.startswith("media/") else ref

    for key in ("image", "video"):
        if key in payload:
            payload[key] = fix(payload[key])
    audio = payload.get("audio")
    payload["audio"] = {k: fix(v) for k, v in audio.items()} if isinstance(audio, dict) else fix(audio)
    return payload


def tiny_clip_payload(**extra: Any) -> dict:
    """A one-chunk tiny job of 5 frames (the cheapest real job there is)."""
    return {
        "image": str(PORTRAIT),
        "audio": str(SPEECH),
        "mode": "clip",
        "frame_num": 5,
        "motion_frame": 1,
        "seed": 1,
        **FAST,
        **extra,
    }


# ----------------------------------------------------------------------------- secrets


@dataclass
class SecretRegistry:
    values: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)

    def add(self, *values: str) -> None:
        self.values.extend(v for v in values if v)

    def watch(self, path: Path) -> None:
        """Scan this file (a subprocess's log) after the test."""
        self.files.append(Path(path))

    def output(self, obj: Any) -> None:
        """Scan this job output / error too."""
        self.outputs.append(obj)

    def leaks(self, texts: dict[str, str]) -> list[str]:
        found = []
        for where, text in texts.items():
            for v in self.values:
                if v in text:
                    found.append(f"secret {v[:3]}… found in {where}")
        return found


_REGISTRY = pytest.StashKey[SecretRegistry]()


@pytest.fixture()
def secrets(request: pytest.FixtureRequest) -> SecretRegistry:
    reg = SecretRegistry()
    request.node.stash[_REGISTRY] = reg
    return reg


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "teardown":
        return
    reg = item.stash.get(_REGISTRY, None)
    if reg is None or not reg.values:
        return
    # stdout/stderr of every phase: what the worker (and any subprocess on the inherited fds) wrote.
    # pytest's own "log" section is left out: its handler sees raw records before the worker's
    # redacting renderer (e.g. botocore's DEBUG request dumps), which no deployment prints.
    texts = {f"captured {key}": content for _when, key, content in item._report_sections if key in ("stdout", "stderr")}
    for path in reg.files:
        try:
            texts[f"file {path.name}"] = path.read_text(errors="replace")
        except OSError:
            pass
    for i, obj in enumerate(reg.outputs):
        texts[f"output {i}"] = obj if isinstance(obj, str) else json.dumps(obj, default=str)
    leaks = reg.leaks(texts)
    if leaks:
        rep.outcome = "failed"
        rep.longrepr = "secrets leaked:\n" + "\n".join(leaks)


# ----------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.tiny import ensure_tiny_checkpoint

    cache = tmp_path_factory.mktemp("tiny-cache")
    ensure_tiny_checkpoint(cache / "tiny")  # where conf/model/tiny.yaml looks: ${server.cache_dir}/tiny
    return cache


def ctx_overrides(tmp: Path, cache: Path, *overrides: str) -> list[str]:
    return [
        f"server.cache_dir={cache}",
        f"server.work_dir={tmp / 'work'}",
        f"storage.local.root={tmp / 'outputs'}",
        *overrides,
    ]


@pytest.fixture()
def make_ctx(tiny_cache: Path):
    from configuration import compose_config
    from worker.job import JobContext

    def make(tmp: Path, *overrides: str):
        cfg = compose_config(ctx_overrides(tmp, tiny_cache, *overrides))
        return JobContext.create(cfg, extra_roots=[EXAMPLES])

    return make
