"""Where each weight file sits in the original layout (Wan2.1 model folder + InfiniteTalk adapter file).

The published folders carry no config for T5, CLIP or the VAE (upstream hard-codes the full sizes).
An optional `engine_components.json` in the model folder overrides those sizes; the tiny model
writes one, so the very same loaders serve the tiny and the full model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.engine.errors import WeightLoadError

DIT_CONFIG = "config.json"
DIT_SHARD_PATTERN = "diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors"
DIT_SHARD_COUNT = 7
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
VAE_FILE = "Wan2.1_VAE.pth"
COMPONENTS_FILE = "engine_components.json"

INFINITETALK_KEY_PREFIXES = ("audio_proj.",)
INFINITETALK_BLOCK_PARTS = (".audio_cross_attn.", ".norm_x.")


def is_adapter_key(key: str) -> bool:
    """True for the keys that the InfiniteTalk file adds to the plain Wan2.1 I2V DiT."""
    return key.startswith(INFINITETALK_KEY_PREFIXES) or (
        key.startswith("blocks.") and any(part in key for part in INFINITETALK_BLOCK_PARTS)
    )


def dit_shard_names(n: int = DIT_SHARD_COUNT) -> list[str]:
    return [DIT_SHARD_PATTERN.format(i=i, n=n) for i in range(1, n + 1)]


@dataclass(frozen=True)
class CheckpointLayout:
    """Paths of one model installation; `check()` names the first missing file."""

    ckpt_dir: Path
    infinitetalk_file: Path
    wav2vec_dir: Path
    # A consolidated DiT bundle made by `weights repack` (adapter and LoRA merged, bf16 or fp8):
    # when set, it replaces the base shards and the adapter file.
    dit_bundle: Path | None = None
    # Upstream's fp8 DiT (optimum-quanto file, adapter included): read only when the engine runs fp8
    # and no bundle is given; then it, too, replaces the base shards and the adapter file.
    quant_file: Path | None = None

    @property
    def dit_config(self) -> Path:
        return self.ckpt_dir / DIT_CONFIG

    @property
    def dit_shards(self) -> list[Path]:
        """The base shards: listed by the index json when present, else the 7 published names."""
        index = self.ckpt_dir / "diffusion_pytorch_model.safetensors.index.json"
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as exc:
                raise WeightLoadError(str(index), None, f"unreadable shard index: {exc}") from exc
            return [self.ckpt_dir / n for n in names]
        single = self.ckpt_dir / "diffusion_pytorch_model.safetensors"
        if single.is_file():
            return [single]
        return [self.ckpt_dir / n for n in dit_shard_names()]

    @property
    def dit_files(self) -> list[Path]:
        """Base shards then the adapter, merged in that order (later files win, as upstream merges)."""
        return [*self.dit_shards, self.infinitetalk_file]

    @property
    def dit_sources(self) -> list[Path]:
        """The DiT weight files a load reads: the bundle, else the quant file, else shards + adapter."""
        if self.dit_bundle:
            return [self.dit_bundle]
        if self.quant_file:
            return [self.quant_file]
        return self.dit_files

    @property
    def t5_file(self) -> Path:
        return self.ckpt_dir / T5_FILE

    @property
    def t5_tokenizer(self) -> Path:
        return self.ckpt_dir / T5_TOKENIZER_DIR

    @property
    def clip_file(self) -> Path:
        return self.ckpt_dir / CLIP_FILE

    @property
    def vae_file(self) -> Path:
        return self.ckpt_dir / VAE_FILE

    def component_overrides(self) -> dict[str, dict[str, Any]]:
        path = self.ckpt_dir / COMPONENTS_FILE
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise WeightLoadError(str(path), None, f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise WeightLoadError(str(path), None, "expected an object of per-component settings")
        return data

    def required_files(self) -> list[Path]:
        return [
            self.dit_config,
            *self.dit_sources,
            self.t5_file,
            self.t5_tokenizer,
            self.clip_file,
            self.vae_file,
            self.wav2vec_dir / "config.json",
        ]

    def read_order(self, quant: str = "none") -> list[Path]:
        """Every weight file in the order `Engine.__init__` reads them (DiT as `_load_dit` picks its source,
        then VAE, umT5 and its tokenizer, CLIP, wav2vec2): what a start-up read-ahead streams first."""
        if self.dit_bundle is not None:
            dit = [self.dit_bundle]
        elif quant == "fp8" and self.quant_file is not None:
            dit = [self.quant_file]
        else:
            dit = self.dit_files
        tokenizer = sorted(p for p in self.t5_tokenizer.glob("*") if p.is_file()) if self.t5_tokenizer.is_dir() else []
        wav2vec = sorted(p for p in self.wav2vec_dir.glob("*") if p.is_file()) if self.wav2vec_dir.is_dir() else []
        return [*dit, self.vae_file, self.t5_file, *tokenizer, self.clip_file, *wav2vec]

    def check(self) -> None:
        for path in self.required_files():
            if not path.exists():
                raise WeightLoadError(str(path), None, "file not found")


def published_layout(root: Path) -> CheckpointLayout:
    """The folder names of the published downloads under one root (as the tiny model mirrors them)."""
    root = Path(root)
    return CheckpointLayout(
        ckpt_dir=root / "Wan2.1-I2V-14B-480P",
        infinitetalk_file=root / "InfiniteTalk" / "single" / "infinitetalk.safetensors",
        wav2vec_dir=root / "chinese-wav2vec2-base",
    )
