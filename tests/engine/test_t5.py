"""umT5 encoder: golden parity, full-size key layout, strict loading, tokenizer round trip."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import golden_cases
from worker.engine.models.t5 import (
    EOS_ID,
    PAD_ID,
    T5Config,
    T5TextEncoder,
    UMT5Encoder,
    clean_prompt,
    write_tiny_tokenizer,
)
from worker.engine.models.text_tokenizer import TokenizerFolderError

ATOL = 1e-4
INPUT_KEYS = {"ids", "mask"}


def _is_t5_case(folder: Path) -> bool:
    files = ("weights.safetensors", "tensors.safetensors", "meta.json")
    if not all((folder / f).is_file() for f in files):
        return False
    meta = json.loads((folder / "meta.json").read_text())
    return "factory_overrides" in meta and "seq_lens" in meta


T5_CASES = golden_cases(_is_t5_case)


def _load_case(folder: Path) -> tuple[UMT5Encoder, dict[str, torch.Tensor], dict]:
    meta = json.loads((folder / "meta.json").read_text())
    model = UMT5Encoder(T5Config.from_factory_overrides(meta["factory_overrides"])).eval()
    model.load_original_state_dict(load_file(folder / "weights.safetensors"))
    return model, load_file(folder / "tensors.safetensors"), meta


@pytest.mark.parametrize("case", T5_CASES, ids=lambda p: p.name)
def test_golden_parity(golden_dir: Path, case: Path) -> None:
    model, tensors, meta = _load_case(case)
    ids, mask = tensors["ids"], tensors["mask"]
    with torch.no_grad():
        full = model(ids, mask)
    encoder = T5TextEncoder(model, tokenizer=None, text_len=ids.shape[1])
    trimmed = encoder.encode_ids(ids, mask)
    assert [t.shape[0] for t in trimmed] == list(meta["seq_lens"])

    checked = set(INPUT_KEYS)
    for name, expected in tensors.items():
        if name in INPUT_KEYS:
            continue
        if name == "output_full":
            got = full
        elif m := re.fullmatch(r"output_trimmed(\d+)", name):
            got = trimmed[int(m.group(1))]
        elif m := re.fullmatch(r"rel_pos_bias_block(\d+)", name):
            with torch.no_grad():
                got = model.blocks[int(m.group(1))].pos_embedding(ids.shape[1], ids.shape[1])
        else:
            pytest.fail(f"golden tensor {name!r} has no counterpart in this test")
        assert got.shape == expected.shape, name
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0, msg=lambda s, n=name: f"{n}: {s}")
        checked.add(name)
    assert checked == set(tensors)


@pytest.mark.parametrize("case", T5_CASES, ids=lambda p: p.name)
def test_bf16_close_to_float32(golden_dir: Path, case: Path) -> None:
    model, tensors, _ = _load_case(case)
    ref = tensors["output_full"]
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        out = model(tensors["ids"], tensors["mask"])
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    err = (out.float() - ref).abs().max().item()
    assert err < 0.05 * ref.abs().max().item()


def test_full_size_keys_match_manifest(golden_dir: Path) -> None:
    manifest = json.loads((golden_dir / "full_size_key_manifests.json").read_text())["t5_umt5_xxl_encoder"]
    with torch.device("meta"):
        model = UMT5Encoder(T5Config())
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(manifest)
    assert got == manifest
    assert len(got) == 242


def test_meta_model_loads_with_assign() -> None:
    cfg = T5Config.tiny()
    src = UMT5Encoder(cfg)
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    model.load_original_state_dict(src.state_dict(), assign=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), src(ids, mask))


def test_strict_load_fails_on_missing_key() -> None:
    cfg = T5Config.tiny()
    sd = UMT5Encoder(cfg).state_dict()
    del sd["blocks.1.pos_embedding.embedding.weight"]
    with pytest.raises(RuntimeError, match=r"blocks\.1\.pos_embedding\.embedding\.weight"):
        UMT5Encoder(cfg).load_original_state_dict(sd)


def test_strict_load_fails_on_unexpected_key() -> None:
    cfg = T5Config.tiny()
    sd = UMT5Encoder(cfg).state_dict()
    sd["pos_embedding.embedding.weight"] = torch.zeros(cfg.num_buckets, cfg.num_heads)
    with pytest.raises(RuntimeError, match="Unexpected"):
        UMT5Encoder(cfg).load_original_state_dict(sd)


def test_factory_overrides_reject_unknown_names() -> None:
    with pytest.raises(ValueError):
        T5Config.from_factory_overrides({"vocab": 10})
    assert T5Config.from_factory_overrides({"encoder_layers": 3, "decoder_layers": 9}).num_layers == 3


def test_padding_does_not_change_real_tokens() -> None:
    torch.manual_seed(0)
    model = UMT5Encoder(T5Config.tiny()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    ids = torch.tensor([[5, 9, 17, EOS_ID]])
    padded = torch.cat([ids, torch.full((1, 6), PAD_ID)], dim=1)
    mask = (padded != PAD_ID).long()
    with torch.no_grad():
        short = model(ids, torch.ones_like(ids))
        long = model(padded, mask)
    torch.testing.assert_close(long[:, :4], short, atol=1e-5, rtol=0)


def test_clean_prompt_collapses_whitespace_and_unescapes_html() -> None:
    assert clean_prompt("  a \t man\n\n talks  ") == "a man talks"
    assert clean_prompt("fish &amp;amp; chips") == "fish & chips"
    assert clean_prompt("") == ""


def test_tiny_tokenizer_round_trip(tmp_path: Path) -> None:
    cfg = T5Config.tiny()
    folder = write_tiny_tokenizer(tmp_path / "tok", cfg.vocab_size)
    assert (folder / "tokenizer.json").is_file()

    torch.manual_seed(0)
    encoder = T5TextEncoder(UMT5Encoder(cfg).eval(), folder, text_len=24)
    tok = encoder.tokenizer
    assert len(tok) == cfg.vocab_size
    assert (tok.pad_token_id, tok.eos_token_id) == (PAD_ID, EOS_ID)

    texts = ["  the  man\n talks &amp; smiles ", "a woman speaks"]
    ids, mask = encoder.tokenize(texts)
    assert ids.shape == mask.shape == (2, 24)
    assert int(ids.max()) < cfg.vocab_size
    for row, m, text in zip(ids, mask, texts):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()
        assert row[n - 1] == EOS_ID and (row[n:] == PAD_ID).all()
        assert tok.decode(row[:n], skip_special_tokens=True) == clean_prompt(text)

    long_ids, long_mask = encoder.tokenize(["the man " * 40])
    assert long_mask.all() and long_ids[0, -1] == EOS_ID

    out = encoder.encode(texts)
    assert [o.shape for o in out] == [(int(m.sum()), cfg.dim) for m in mask]
    with torch.no_grad():
        full = encoder.model(ids, mask)
    for i, o in enumerate(out):
        torch.testing.assert_close(o, full[i, : o.shape[0]])


_NO_TRANSFORMERS = """
import sys
from pathlib import Path
from worker.engine.models.t5 import T5Config, T5TextEncoder, UMT5Encoder
enc = T5TextEncoder(UMT5Encoder(T5Config.tiny()), Path(sys.argv[1]), text_len=16)
ids, mask = enc.tokenize(["a man talks"])
assert "transformers" not in sys.modules, "transformers imported for a tokenizer.json folder"
print(ids.shape[1], int(mask.sum()))
try:
    T5TextEncoder(UMT5Encoder(T5Config.tiny()), Path(sys.argv[2]), text_len=16)
except Exception as exc:
    print("fallback", type(exc).__name__, "transformers" in sys.modules)
"""


def test_tokenizer_json_folder_loads_without_transformers(tmp_path: Path) -> None:
    folder = write_tiny_tokenizer(tmp_path / "tok", T5Config.tiny().vocab_size)
    (tmp_path / "empty").mkdir()
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", _NO_TRANSFORMERS, str(folder), str(tmp_path / "empty")],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split("\n")
    assert lines[0] == "16 5"  # "a man talks" -> 4 pieces + </s>, padded to text_len
    # a folder without tokenizer.json still goes to transformers (which cannot read an empty one)
    assert lines[1].startswith("fallback ") and lines[1].endswith(" True")


def test_broken_tokenizer_folder_raises_a_named_error(tmp_path: Path) -> None:
    folder = write_tiny_tokenizer(tmp_path / "tok", T5Config.tiny().vocab_size)
    model = UMT5Encoder(T5Config.tiny())
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerFolderError, match=r"tokenizer\.json: cannot load"):
        T5TextEncoder(model, folder)
    write_tiny_tokenizer(folder, T5Config.tiny().vocab_size)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "pad_token": "[PAD]"}))
    with pytest.raises(TokenizerFolderError, match=r"pad token '\[PAD\]' is not in the vocabulary"):
        T5TextEncoder(model, folder)


@pytest.mark.parametrize("case", T5_CASES, ids=lambda p: p.name)
def test_from_original_pth_checkpoint(golden_dir: Path, case: Path, tmp_path: Path) -> None:
    meta = json.loads((case / "meta.json").read_text())
    cfg = T5Config.from_factory_overrides(meta["factory_overrides"])
    pth = tmp_path / "t5.pth"
    torch.save(load_file(case / "weights.safetensors"), pth)
    model = UMT5Encoder.from_original_checkpoint(pth, cfg, dtype=torch.float32)
    tensors = load_file(case / "tensors.safetensors")
    with torch.no_grad():
        out = model(tensors["ids"], tensors["mask"])
    torch.testing.assert_close(out, tensors["output_full"], atol=ATOL, rtol=0)


def test_left_padding_tokenizer_is_refused(tmp_path: Path) -> None:
    """encode_ids keeps each row's first n positions: a left-padding tokenizer would hand the DiT pad embeddings."""
    folder = write_tiny_tokenizer(tmp_path / "tok", T5Config.tiny().vocab_size)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "padding_side": "left"}))
    with pytest.raises(ValueError, match="pad on the right"):
        T5TextEncoder(UMT5Encoder(T5Config.tiny()), folder)
