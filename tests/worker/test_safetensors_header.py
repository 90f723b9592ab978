"""The torch-free safetensors header check (worker/inputs/safetensors_header.py): whole files pass with every
tensor's entry; pickles, garbage, truncation and inconsistent offsets are refused in plain words."""
from __future__ import annotations

import io
import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from worker.inputs.safetensors_header import HeaderProblem, TensorEntry, read_header


def file_with(tmp_path, header: dict, body: bytes = b"", name: str = "f.safetensors"):
    raw = json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def test_a_real_file_lists_every_tensor(tmp_path):
    path = tmp_path / "l.safetensors"
    save_file({"a.lora_down.weight": torch.zeros(2, 8, dtype=torch.bfloat16), "a.alpha": torch.tensor(2.0)},
              str(path), metadata={"format": "pt"})
    got = read_header(path)
    assert got["a.lora_down.weight"].dtype == "BF16" and got["a.lora_down.weight"].shape == (2, 8)
    assert got["a.alpha"] == TensorEntry("F32", (), got["a.alpha"].begin, got["a.alpha"].begin + 4)


def test_a_pickled_checkpoint_is_not_safetensors(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    (tmp_path / "p.pt").write_bytes(buf.getvalue())
    with pytest.raises(HeaderProblem, match="pickled"):
        read_header(tmp_path / "p.pt")


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(0, 200))
def test_a_truncated_file_is_refused(tmp_path_factory, cut):
    path = tmp_path_factory.mktemp("t") / "l.safetensors"
    save_file({"a": torch.ones(4, 4), "b": torch.ones(3)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: max(0, len(data) - 1 - cut)])
    with pytest.raises(HeaderProblem):
        read_header(path)


@pytest.mark.parametrize("header, body, words", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "outside the file"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "does not match"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "malformed shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}, b"\0" * 8, "malformed data_offsets"),
    ({"a": [1, 2]}, b"", "no dtype"),
    ({"__metadata__": {"x": 1}}, b"", "__metadata__"),
])
def test_inconsistent_headers_are_refused(tmp_path, header, body, words):
    with pytest.raises(HeaderProblem, match=words):
        read_header(file_with(tmp_path, header, body))


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=512))
def test_random_bytes_are_refused_unless_they_are_a_whole_header(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("r") / "x.safetensors"
    path.write_bytes(data)
    try:
        entries = read_header(path)
    except HeaderProblem:
        return
    for e in entries.values():  # the rare pass is consistent with the file
        assert 0 <= e.begin <= e.end <= len(data)
