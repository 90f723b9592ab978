"""bench/cold_start.py run for real at tiny size on the CPU: it writes the checkpoint, a fresh process builds
the engine from it, and the folder goes away unless kept."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from worker.engine.formats.bundle import read_bundle_metadata

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "cold_start.py"
COMPONENTS = {"dit", "vae", "t5", "clip", "wav2vec2"}


def _run(out: Path, ckpt: Path, *extra: str) -> dict:
    # --no-drop-caches: per-file eviction only, the rest of a shared test machine's page cache stays.
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--dir", str(ckpt), "--scale", "tiny",
           "--device", "cpu", "--no-drop-caches", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _engine_was_built(result: dict) -> None:
    assert result["process_to_ready_s"] > 0
    child = result["cold_start"]["child"]
    assert set(child["load_report"]["seconds"]) >= COMPONENTS
    assert child["dit_params"] > 0 and child["dit_dtype"] == "float32" and child["dit_device"] == "cpu"
    assert result["ratio"] == round(result["process_to_ready_s"] / (result["bytes_total"] / (result["bandwidth"]["gb_per_s"] * 1e9)), 3)


def test_writes_a_bundle_checkpoint_and_times_a_fresh_engine(tmp_path):
    ckpt = tmp_path / "ckpt"
    kept = _run(tmp_path / "kept.json", ckpt, "--keep")
    _engine_was_built(kept)
    on_disk = {str(p.relative_to(ckpt)): p.stat().st_size for p in ckpt.rglob("*") if p.is_file() and p.name != ".cold_start_bench"}
    assert kept["files"] == on_disk
    assert kept["bytes_total"] == sum(on_disk.values()) == kept["write"]["bytes"]
    bundle = ckpt / "bundles" / "infinitetalk_single_bf16.safetensors"
    meta = read_bundle_metadata(bundle)
    assert meta["dtype"] == "bfloat16" and json.loads(meta["dit_config"])["model_type"] == "i2v"
    assert kept["cold_start"]["child"]["dit_params"] > 0
    # cold imports the start path must not pay: transformers (13 s on a GPU host), sympy via torch.fx (2-3 s)
    assert kept["cold_start"]["child"]["transformers_imported"] is False
    assert kept["cold_start"]["child"]["sympy_imported"] is False

    ahead = kept["cold_start"]["child"]["read_ahead"]  # the child started the worker's read-ahead before torch
    assert ahead["files"] == len(on_disk) - 2  # every weight file in load order (not the two small config jsons)
    assert 0 < ahead["bytes_read"] <= kept["bytes_total"]

    # The kept folder is reused as it is, then removed (no --keep); --compare-warm adds a start without read-ahead.
    reused = _run(tmp_path / "reused.json", ckpt, "--skip-write", "--compare-warm")
    _engine_was_built(reused)
    assert reused["cold_start_no_warm"]["child"]["read_ahead"] is None
    assert reused["ratio_no_warm"] > 0 and reused["cold_start"]["child"]["read_ahead"]["files"] == ahead["files"]
    assert "write" not in reused and reused["bytes_total"] == kept["bytes_total"]
    assert reused["removed_dir"] is True and not ckpt.exists()


def test_fp8_bundle_is_written_in_e4m3_and_loaded_as_fp8(tmp_path):
    from safetensors import safe_open

    ckpt = tmp_path / "ckpt"
    result = _run(tmp_path / "fp8.json", ckpt, "--quant", "fp8", "--keep")
    _engine_was_built(result)
    bundle = ckpt / "bundles" / "infinitetalk_single_bf16.safetensors"
    assert read_bundle_metadata(bundle)["dtype"] == "float8_e4m3fn"
    with safe_open(str(bundle), framework="pt") as f:
        q = f.get_tensor("blocks.0.ffn.0.weight")
        scale = f.get_tensor("blocks.0.ffn.0.weight.scale")
    assert str(q.dtype) == "torch.float8_e4m3fn" and scale.shape == (q.shape[0],)
    assert float(q.float().abs().amax()) == 448.0  # each row's largest magnitude maps onto 448
    assert result["cold_start"]["child"]["dit_fp8_linears"] > 0


def test_refuses_a_folder_it_did_not_write(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json"), "--dir", str(foreign), "--scale", "tiny",
           "--device", "cpu", "--no-drop-caches"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "refusing" in proc.stderr + proc.stdout
    assert (foreign / "precious.txt").read_text() == "keep me"
