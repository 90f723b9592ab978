"""A tokenizer folder's `tokenizer.json` driven by the `tokenizers` library alone.

Why: importing transformers costs ~13 s of a cold start, and the engine only needs its fast
tokenizer, which is this same Rust backend with truncation and padding switched on per call.
`TokenizerJson.__call__` reproduces `AutoTokenizer(...)(texts, padding="max_length",
truncation=True, max_length=n, add_special_tokens=True, return_tensors="pt")` as transformers 4.x
loads a folder (tokenizer.json used as written), bit for bit.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

__all__ = ["TokenizerFolderError", "TokenizerJson", "TokenizerSettings", "read_settings"]

_SIDES = ("right", "left")


class TokenizerFolderError(ValueError):
    """The tokenizer folder cannot be used as written (names the file and the problem)."""


@dataclass(frozen=True)
class TokenizerSettings:
    """What transformers would take from tokenizer_config.json / special_tokens_map.json."""

    pad_token: str = "<pad>"
    eos_token: str | None = "</s>"
    padding_side: str = "right"
    truncation_side: str = "right"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerFolderError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise TokenizerFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_text(value: Any, key: str, source: Path) -> str | None:
    """A special token as transformers stores it: a string or an AddedToken dict with "content"."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise TokenizerFolderError(f"{source}: {key} must be a non-empty string or {{'content': ...}}")
    return value


def read_settings(folder: Path) -> TokenizerSettings:
    """Special tokens and sides; special_tokens_map.json wins over tokenizer_config.json as in transformers."""
    cfg_path, map_path = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
    cfg, special = _read_json(cfg_path), _read_json(map_path)

    def token(key: str, default: str | None) -> str | None:
        for data, path in ((special, map_path), (cfg, cfg_path)):
            found = _token_text(data.get(key), key, path)
            if found is not None:
                return found
        return default

    sides = {}
    for key in ("padding_side", "truncation_side"):
        side = cfg.get(key)
        side = "right" if side is None else side
        if side not in _SIDES:
            raise TokenizerFolderError(f"{cfg_path}: {key} must be 'right' or 'left', got {side!r}")
        sides[key] = side
    return TokenizerSettings(pad_token=token("pad_token", "<pad>") or "<pad>", eos_token=token("eos_token", "</s>"),
                             **sides)


class TokenizerJson:
    """Callable like a transformers fast tokenizer for the one call the engine makes.

    The Rust backend holds truncation and padding as state, so each call sets them and encodes under
    one lock: two threads with different lengths never see each other's settings."""

    def __init__(self, backend: Tokenizer, settings: TokenizerSettings, source: str = "tokenizer.json") -> None:
        pad_id = backend.token_to_id(settings.pad_token)
        if pad_id is None:
            raise TokenizerFolderError(f"{source}: pad token {settings.pad_token!r} is not in the vocabulary")
        self.backend = backend
        self.settings = settings
        self.pad_token_id = pad_id
        self.eos_token_id = backend.token_to_id(settings.eos_token) if settings.eos_token else None
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, folder: str | Path) -> TokenizerJson:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        settings = read_settings(folder)
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception for any malformed file
            raise TokenizerFolderError(f"{path}: cannot load ({exc})") from exc
        return cls(backend, settings, str(path))

    @property
    def padding_side(self) -> str:
        return self.settings.padding_side

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch(self, texts: Sequence[str], max_length: int, add_special_tokens: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids and attention mask `[B, max_length]` int64: cut to max_length (special tokens included),
        then padded with the pad token, mask 0 on padding."""
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        s = self.settings
        with self._lock:
            self.backend.enable_truncation(max_length, stride=0, strategy="longest_first",
                                           direction=s.truncation_side)
            self.backend.enable_padding(direction=s.padding_side, pad_id=self.pad_token_id, pad_type_id=0,
                                        pad_token=s.pad_token, length=max_length)
            encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(len(encodings), max_length)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long).reshape(ids.shape)
        return ids, mask

    def __call__(self, texts: Sequence[str] | str, *, padding: str = "max_length", truncation: bool = True,
                 max_length: int, add_special_tokens: bool = True, return_attention_mask: bool = True,
                 return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        if (padding, truncation, return_attention_mask, return_tensors) != ("max_length", True, True, "pt"):
            raise ValueError("TokenizerJson only pads to max_length with truncation, returning torch tensors")
        if isinstance(texts, str):
            texts = [texts]
        ids, mask = self.batch(texts, max_length, add_special_tokens)
        return {"input_ids": ids, "attention_mask": mask}
