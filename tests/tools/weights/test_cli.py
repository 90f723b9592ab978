"""The weights CLI end to end on the tiny model: make-tiny, verify, repack, and their exit codes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


from worker.engine.formats.bundle import read_bundle_metadata
from tools.weights.cli import main

REPO = Path(__file__).resolve().parents[3]


def test_make_tiny_verify_repack(tmp_path, capsys):
    vol = tmp_path / "vol"
    assert main(["make-tiny", str(vol)]) == 0
    assert main(["verify", str(vol)]) == 0
    ckpt = vol / "Wan2.1-I2V-14B-480P"
    adapter = vol / "InfiniteTalk" / "single" / "infinitetalk.safetensors"
    out = tmp_path / "bundle-fp8.safetensors"
    assert main(["repack", "--ckpt-dir", str(ckpt), "--adapter", str(adapter), "--dtype", "fp8", "--out", str(out)]) == 0
    assert read_bundle_metadata(out)["dtype"] == "float8_e4m3fn"

    shard = ckpt / "diffusion_pytorch_model-00002-of-00007.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    capsys.readouterr()
    assert main(["verify", str(vol), "--sizes-only"]) == 1
    assert "diffusion_pytorch_model-00002-of-00007.safetensors: truncated" in capsys.readouterr().out
    assert main(["repack", "--ckpt-dir", str(ckpt), "--adapter", str(adapter), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "diffusion_pytorch_model-00002-of-00007.safetensors" in capsys.readouterr().err


def test_fetch_dry_run_lists_the_conf_file_list(tmp_path, capsys):
    assert main(["fetch", "--model", "infinitetalk_single", "--dest", str(tmp_path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "Wan-AI/Wan2.1-I2V-14B-480P@main" in err and "single/infinitetalk.safetensors" in err
    assert "TencentGameMate/chinese-wav2vec2-base@refs/pr/1" in err


def test_module_entry_point_runs_without_torch_imported_for_help():
    res = subprocess.run(
        [sys.executable, "-c", "import sys, tools.weights.cli, worker.engine.formats.bundle; print('torch' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert res.stdout.strip() == "False"
    res = subprocess.run([sys.executable, "-m", "tools.weights", "--help"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and "upload-volume" in res.stdout


def test_isolation_converter_refuses_what_is_not_htdemucs(tmp_path, capsys):
    import torch

    from testkit.tiny import randomise
    from worker.engine.models.separation import HTDemucs, SeparationConfig

    torch.save(randomise(HTDemucs(SeparationConfig.tiny()), 1), tmp_path / "small.th")
    out = tmp_path / "htdemucs.safetensors"
    assert main(["isolation", "--src", str(tmp_path / "small.th"), "--out", str(out)]) == 2
    assert "encoder.0.conv.weight" in capsys.readouterr().err and not out.exists()
    assert main(["isolation", "--src", str(tmp_path / "missing.th"), "--out", str(out)]) == 2
    assert "file not found" in capsys.readouterr().err
