"""repack: exact bf16 casts, fp8 within the stated bound, LoRA merges, bounded peak RSS."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from worker.engine.formats.bundle import FP8_ABS_STEPS, FP8_MAX, FP8_REL_ERR, SCALE_SUFFIX
from worker.engine.formats.fp8 import dequantize_rows, quantize_rows
from worker.engine.formats.loaders import read_state_dict
from tools.weights.repack import LoraSpec, RepackError, read_header, repack

REPO = Path(__file__).resolve().parents[3]


def _merged(layout) -> dict[str, torch.Tensor]:
    return read_state_dict(layout.dit_files)  # later files win, as the engine merges


def test_bf16_bundle_holds_the_exact_bf16_cast_of_every_tensor(tiny_layout, tmp_path):
    out = repack(tiny_layout.dit_files, tmp_path / "b.safetensors", dtype="bfloat16", config_file=tiny_layout.dit_config)
    src = _merged(tiny_layout)
    got = load_file(str(out.path))
    assert set(got) == set(src)
    for key, value in src.items():
        assert got[key].dtype == torch.bfloat16
        assert torch.equal(got[key], value.to(torch.bfloat16)), key
    _, meta = read_header(out.path)
    assert meta["format"] == "infinitetalk-bundle" and meta["dtype"] == "bfloat16"
    assert json.loads(meta["dit_config"])["dim"] == 64
    assert [s["file"] for s in json.loads(meta["sources"])][-1] == "infinitetalk.safetensors"
    assert out.size < out.source_bytes * 0.55  # half the bytes of the fp32 originals, plus a header


def test_fp8_bundle_is_within_half_an_e4m3_step(tiny_layout, tmp_path):
    out = repack(tiny_layout.dit_files, tmp_path / "q.safetensors", dtype="float8_e4m3fn")
    src = _merged(tiny_layout)
    got = load_file(str(out.path))
    assert out.quantized > 0
    for key, value in src.items():
        if key + SCALE_SUFFIX in got:
            q, scale = got[key], got[key + SCALE_SUFFIX]
            assert q.dtype == torch.float8_e4m3fn and scale.shape == (value.shape[0],)
            w = dequantize_rows(q, scale)
            bound = FP8_REL_ERR * value.abs() + FP8_ABS_STEPS * scale[:, None] + 1e-12
            assert bool(((w - value).abs() <= bound).all()), key
            assert (w - value).norm() / value.norm() < 0.04, key  # stated per-tensor tolerance
        else:
            assert torch.equal(got[key], value.to(torch.bfloat16)), key


def test_quantize_handles_zero_rows_and_extremes():
    w = torch.tensor([[0.0, 0.0, 0.0], [1e-6, -2.0, 3.0], [1e4, -1e4, 5.0]])
    q, s = quantize_rows(w)
    back = dequantize_rows(q, s)
    assert torch.equal(back[0], torch.zeros(3))
    assert float(back[2].abs().max()) == pytest.approx(1e4)
    assert float(q.float().abs().max()) == FP8_MAX


def test_lora_is_merged_in_float32_before_the_cast(tiny_layout, tmp_path):
    src = _merged(tiny_layout)
    target = next(k for k in src if k.startswith("blocks.0.") and k.endswith(".weight") and src[k].ndim == 2)
    bias = target[: -len(".weight")] + ".bias"
    out_dim, in_dim = src[target].shape
    g = torch.Generator().manual_seed(1)
    down = torch.randn(4, in_dim, generator=g)
    up = torch.randn(out_dim, 4, generator=g)
    lora = {
        f"diffusion_model.{target[:-7]}.lora_down.weight": down,
        f"diffusion_model.{target[:-7]}.lora_up.weight": up,
        f"diffusion_model.{target[:-7]}.alpha": torch.tensor(8.0),
    }
    if bias in src:
        lora[f"diffusion_model.{bias[:-5]}.diff_b"] = torch.ones_like(src[bias])
    save_file(lora, str(tmp_path / "lora.safetensors"))
    out = repack(
        tiny_layout.dit_files,
        tmp_path / "l.safetensors",
        loras=[LoraSpec(tmp_path / "lora.safetensors", 0.5)],
    )
    got = load_file(str(out.path))
    want = (src[target] + 0.5 * (up @ down) * (8.0 / 4)).to(torch.bfloat16)
    assert torch.equal(got[target], want)
    if bias in src:
        assert torch.equal(got[bias], (src[bias] + 0.5).to(torch.bfloat16))
    untouched = next(k for k in src if k.startswith("blocks.1.") and k.endswith(".weight"))
    assert torch.equal(got[untouched], src[untouched].to(torch.bfloat16))


def test_lora_for_a_key_the_model_lacks_is_named(tiny_layout, tmp_path):
    save_file(
        {"blocks.0.nonexistent.lora_down.weight": torch.zeros(2, 2), "blocks.0.nonexistent.lora_up.weight": torch.zeros(2, 2)},
        str(tmp_path / "bad.safetensors"),
    )
    with pytest.raises(RepackError, match="nonexistent"):
        repack(tiny_layout.dit_files, tmp_path / "x.safetensors", loras=[LoraSpec(tmp_path / "bad.safetensors")])
    assert not (tmp_path / "x.safetensors").exists()


def test_truncated_shard_is_named(tiny_layout, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_layout.ckpt_dir, ckpt)
    victim = sorted(ckpt.glob("diffusion_pytorch_model-*.safetensors"))[2]
    victim.write_bytes(victim.read_bytes()[:-100])
    files = sorted(ckpt.glob("diffusion_pytorch_model-*.safetensors")) + [tiny_layout.infinitetalk_file]
    with pytest.raises(RepackError, match=victim.name):
        repack(files, tmp_path / "x.safetensors")


# Synthetic checkpoint in the published layout, big enough that RSS says something:
# 7 shards of 6 fp32 matrices of 1024 x 1536 (6 MiB each, 36 MiB a shard, 252 MiB in all) + adapter.
_WRITE = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    wm = {}
    for s in range(7):
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-00007.safetensors"
        part = {f"blocks.{s * 6 + i}.ffn.0.weight": torch.randn(1024, 1536, generator=g) for i in range(6)}
        part[f"blocks.{s}.norm3.weight"] = torch.ones(1536)
        save_file(part, str(root / name)); wm.update({k: name for k in part})
    json.dump({"weight_map": wm}, open(root / "diffusion_pytorch_model.safetensors.index.json", "w"))
    save_file({"audio_proj.proj1.weight": torch.randn(256, 512, generator=g)}, str(root / "adapter.safetensors"))
    """
)

_MEASURE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from tools.weights.repack import repack

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    root = Path(sys.argv[1]); dtype = sys.argv[2]
    files = sorted(root.glob("diffusion_pytorch_model-*.safetensors")) + [root / "adapter.safetensors"]
    # warm the code paths once on a small file, so lazy imports do not count as repack's memory
    repack([root / "adapter.safetensors"], root / "warm.safetensors", dtype=dtype)
    base = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    repack(files, root / f"out-{dtype}.safetensors", dtype=dtype)
    print(json.dumps({"base": base, "peak": status("VmHWM")}))
    """
)


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
def test_peak_rss_stays_below_one_shard(tmp_path_factory, dtype):
    root = tmp_path_factory.getbasetemp() / "rss-ckpt"
    if not (root / "adapter.safetensors").is_file():
        subprocess.run([sys.executable, "-c", _WRITE, str(root)], check=True, cwd=REPO)
    shard = (root / "diffusion_pytorch_model-00001-of-00007.safetensors").stat().st_size
    total = sum(p.stat().st_size for p in root.glob("diffusion_pytorch_model-*.safetensors"))
    res = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(root), dtype], check=True, cwd=REPO, capture_output=True, text=True
    )
    m = json.loads(res.stdout.strip().splitlines()[-1])
    grown = m["peak"] - m["base"]
    # bounded by about one shard (in fact by a few of the largest tensor), never the whole checkpoint
    assert grown < 1.0 * shard, (grown, shard, total)
    assert grown < total / 5
    out = root / f"out-{dtype}.safetensors"
    assert out.stat().st_size < total * (0.55 if dtype == "bfloat16" else 0.3)
