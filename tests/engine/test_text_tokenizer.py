"""tokenizer.json through the `tokenizers` library: bit-exact with transformers' AutoTokenizer, clear errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.engine.models.t5 import EOS_ID, PAD_ID, UNK_ID, write_tiny_tokenizer
from worker.engine.models.text_tokenizer import TokenizerFolderError, TokenizerJson, read_settings

TEXT_LENS = (1, 2, 3, 7, 24, 64)
WORDS = ("the", "man", "talks", "a", "woman", "smile", "xyz", "Q9", "é", "日本", "!", "  ", "\n", "\t", "<pad>", "</s>")


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="module")
def left_dir(tiny_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "left"
    shutil.copytree(tiny_dir, folder)
    _edit_config(folder, padding_side="left", truncation_side="left")
    return folder


@pytest.fixture(scope="module")
def pairs(tiny_dir, left_dir):
    from transformers import AutoTokenizer

    return [(TokenizerJson.from_folder(d), AutoTokenizer.from_pretrained(str(d))) for d in (tiny_dir, left_dir)]


def _hf(tok, texts, n):
    out = tok(texts, padding="max_length", truncation=True, max_length=n, add_special_tokens=True,
              return_attention_mask=True, return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


texts_strategy = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
        st.lists(st.sampled_from(WORDS), max_size=120).map(" ".join),
        st.sampled_from(["", " ", "\n\t ", "the man " * 60]),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=texts_strategy, text_len=st.sampled_from(TEXT_LENS), which=st.sampled_from([0, 1]))
def test_ids_and_mask_equal_transformers(pairs, texts, text_len, which) -> None:
    ours, theirs = pairs[which]
    ids, mask = _hf(ours, texts, text_len)  # the very call T5TextEncoder.tokenize makes
    ref_ids, ref_mask = _hf(theirs, texts, text_len)
    assert ids.dtype == mask.dtype == torch.int64
    assert ids.shape == mask.shape == (len(texts), text_len)
    assert torch.equal(ids, ref_ids.long()) and torch.equal(mask, ref_mask.long())


def test_truncation_keeps_the_end_token_and_pads_on_the_configured_side(pairs) -> None:
    right, left = pairs[0][0], pairs[1][0]
    ids, mask = right.batch(["the man " * 40, "a"], 8)
    assert mask[0].all() and ids[0, -1] == EOS_ID
    # "a" is one piece ("\u2581a") plus the end token
    assert mask[1].tolist() == [1, 1] + [0] * 6 and (ids[1, 2:] == PAD_ID).all() and ids[1, 1] == EOS_ID
    ids, mask = left.batch(["a"], 8)
    assert mask[0].tolist() == [0] * 6 + [1, 1] and (ids[0, :6] == PAD_ID).all() and ids[0, -1] == EOS_ID
    long_text = "smile " + "the man " * 40 + "woman"
    first, last = right.backend.token_to_id("\u2581smile"), right.backend.token_to_id("\u2581woman")
    kept_right, kept_left = right.batch([long_text], 8)[0][0], left.batch([long_text], 8)[0][0]
    assert kept_right[0] == first and kept_right[-1] == EOS_ID and last not in kept_right.tolist()
    assert kept_left[-2:].tolist() == [last, EOS_ID] and first not in kept_left.tolist()


def test_pad_token_from_special_tokens_map_as_added_token_dict(tiny_dir, tmp_path) -> None:
    from transformers import AutoTokenizer

    folder = tmp_path / "tok"
    shutil.copytree(tiny_dir, folder)
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<unk>", "lstrip": False}}))
    ours = TokenizerJson.from_folder(folder)
    assert ours.pad_token_id == UNK_ID
    ref_ids, ref_mask = _hf(AutoTokenizer.from_pretrained(str(folder)), ["the man", ""], 6)
    ids, mask = ours.batch(["the man", ""], 6)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)
    assert (ids[1, 1:] == UNK_ID).all()


def test_missing_pad_token_is_named(tiny_dir, tmp_path) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tiny_dir, folder)
    _edit_config(folder, pad_token="<nope>")
    with pytest.raises(TokenizerFolderError, match=r"pad token '<nope>' is not in the vocabulary"):
        TokenizerJson.from_folder(folder)


def test_pad_token_defaults_to_pad_when_not_configured(tiny_dir, tmp_path) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tiny_dir, folder)
    (folder / "tokenizer_config.json").unlink()
    assert read_settings(folder).pad_token == "<pad>"
    assert TokenizerJson.from_folder(folder).pad_token_id == PAD_ID


@pytest.mark.parametrize("content", ["", "{\"model\": ", "{\"version\": \"1.0\"}", "[1, 2]", "\xff\xfe"])
def test_broken_tokenizer_json_is_named(tiny_dir, tmp_path, content) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tiny_dir, folder)
    (folder / "tokenizer.json").write_text(content, encoding="latin-1")
    with pytest.raises(TokenizerFolderError, match=r"tokenizer\.json: cannot load"):
        TokenizerJson.from_folder(folder)


@pytest.mark.parametrize("key,value", [("padding_side", "middle"), ("truncation_side", 3)])
def test_unknown_sides_are_refused(tiny_dir, tmp_path, key, value) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tiny_dir, folder)
    _edit_config(folder, **{key: value})
    with pytest.raises(TokenizerFolderError, match=key):
        TokenizerJson.from_folder(folder)


@pytest.mark.parametrize("name,content", [("tokenizer_config.json", "{oops"), ("special_tokens_map.json", "[]"),
                                          ("special_tokens_map.json", "{\"pad_token\": 5}")])
def test_broken_side_files_are_named(tiny_dir, tmp_path, name, content) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tiny_dir, folder)
    (folder / name).write_text(content)
    with pytest.raises(TokenizerFolderError, match=name.replace(".", r"\.")):
        TokenizerJson.from_folder(folder)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_max_length_must_be_a_positive_int(pairs, bad) -> None:
    with pytest.raises(ValueError, match="max_length"):
        pairs[0][0].batch(["a"], bad)


def test_only_the_engine_call_is_supported(pairs) -> None:
    with pytest.raises(ValueError, match="max_length"):
        pairs[0][0](["a"], padding="longest", max_length=4)


def test_concurrent_calls_with_different_lengths_keep_their_own_settings(pairs) -> None:
    """The backend's truncation/padding is shared state; calls from several threads must not mix it."""
    from concurrent.futures import ThreadPoolExecutor

    tok = pairs[0][0]
    texts = [" ".join(WORDS * 8), "the man", ""]
    lengths = [3, 7, 16, 41] * 25
    expected = {n: tok.batch(texts, n) for n in set(lengths)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: (n, tok.batch(texts, n)), lengths))
    for n, (ids, mask) in results:
        assert ids.shape == (len(texts), n)
        assert torch.equal(ids, expected[n][0]) and torch.equal(mask, expected[n][1])
