"""Vision tower of the open-clip XLM-RoBERTa-large / ViT-H/14 model used for InfiniteTalk's image context.

Only the `visual.*` part of `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` is needed:
the DiT consumes the penultimate block's tokens (`[B, 257, 1280]`), never the pooled
embedding or the text tower. Attribute names equal the checkpoint keys minus the `visual.`
prefix, including `post_norm` and `head`, which this path never uses but which must exist
for the strict load to prove the file is the expected one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CLIPVisionConfig",
    "CLIPVisionTower",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "original_key_map",
    "split_original_state_dict",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VISUAL_PREFIX = "visual."
_IGNORED_PREFIXES = ("textual.",)
_IGNORED_KEYS = ("log_scale",)


@dataclass(frozen=True)
class CLIPVisionConfig:
    """Defaults are the full ViT-H/14 tower (pre-norm, GELU, class token, 16x16 patch grid)."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    num_layers: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    out_dim: int = 1024
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.dim % self.num_heads:
            raise ValueError("dim must be divisible by num_heads")
        if self.num_layers < 2:
            raise ValueError("the penultimate-block output needs at least 2 layers")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + 1

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @classmethod
    def tiny(cls, **overrides: Any) -> CLIPVisionConfig:
        """Golden-case sizes; image and patch size stay real so the token count is still 257."""
        base = dict(dim=32, num_heads=2, num_layers=3, out_dim=16)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_factory_overrides(cls, overrides: Mapping[str, Any]) -> CLIPVisionConfig:
        """Config from keyword names of the reference `clip_xlm_roberta_vit_h_14(...)` factory.

        Text-tower names are accepted and ignored; the vision structure flags must keep the
        values this module implements.
        """
        renames = {
            "vision_dim": "dim",
            "vision_heads": "num_heads",
            "vision_layers": "num_layers",
            "vision_mlp_ratio": "mlp_ratio",
            "embed_dim": "out_dim",
            "norm_eps": "eps",
        }
        fixed = {"vision_pool": "token", "vision_pre_norm": True, "vision_post_norm": False, "activation": "gelu"}
        own = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in overrides.items():
            if key in fixed:
                if value != fixed[key]:
                    raise ValueError(f"unsupported CLIP structure {key}={value!r} (only {fixed[key]!r})")
                continue
            name = renames.get(key, key)
            if name in own:
                kwargs[name] = value
            elif not (key.startswith("text_") or key in {"vocab_size", "max_text_len", "type_size", "pad_id"}
                      or key.endswith("dropout")):
                raise ValueError(f"unknown CLIP factory override {key!r}")
        return cls(**kwargs)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 and cast back, as the reference does for half weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        q, k, v = self.to_qkv(x).view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, s, c))


class AttentionBlock(nn.Module):
    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = SelfAttention(cfg.dim, cfg.num_heads)
        self.norm2 = FP32LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def original_key_map(key: str) -> str | None:
    """Checkpoint key -> tower key; None for the parts of the CLIP file this tower drops on purpose.

    Keys that are neither visual nor a known text-side name are returned unchanged, so a strict
    load reports them as unexpected instead of silently skipping them.
    """
    if key.startswith(VISUAL_PREFIX):
        return key[len(VISUAL_PREFIX):]
    if key.startswith(_IGNORED_PREFIXES) or key in _IGNORED_KEYS:
        return None
    return key


def split_original_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tower's state dict taken from the full CLIP dict (text tower and logit scale dropped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = original_key_map(key)
        if name is not None:
            out[name] = value
    return out


class CLIPVisionTower(nn.Module):
    """ViT-H/14 image encoder returning the penultimate block's tokens (class token first)."""

    def __init__(self, cfg: CLIPVisionConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or CLIPVisionConfig()
        self.cfg = cfg
        # Pre-norm ViTs carry no conv bias: the LayerNorm right after would cancel it.
        self.patch_embedding = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.pre_norm = FP32LayerNorm(cfg.dim, eps=cfg.eps)
        self.transformer = nn.Sequential(*(AttentionBlock(cfg) for _ in range(cfg.num_layers)))
        self.post_norm = FP32LayerNorm(cfg.dim, eps=cfg.eps)
        self.head = nn.Parameter(torch.zeros(cfg.dim, cfg.out_dim))

    def load_original_state_dict(self, sd: Mapping[str, torch.Tensor], assign: bool = False) -> None:
        """Strictly load `visual.*` of the original flat CLIP dict; `textual.*` and `log_scale` are ignored."""
        self.load_state_dict(split_original_state_dict(sd), strict=True, assign=assign)

    @classmethod
    def from_original_checkpoint(
        cls,
        path: str | Path,
        cfg: CLIPVisionConfig | None = None,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> CLIPVisionTower:
        """Build on the meta device and fill strictly from the original CLIP `.pth`; the text tower is
        skipped by the key map and never converted; a bad file or key is named in a WeightLoadError."""
        from worker.engine.formats.loaders import load_module

        with torch.device("meta"):
            model = cls(cfg)
        load_module(model, [path], device=device, dtype=dtype, key_map=original_key_map)
        return model.eval().requires_grad_(False)

    def preprocess(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """`[B, 3, T, H, W]` (or a list of `[3, T, H, W]`) in [-1, 1] -> normalised `[B*T, 3, S, S]` float32.

        Bicubic resizing can overshoot [-1, 1]; like the reference, nothing is clamped.
        """
        size = (self.cfg.image_size, self.cfg.image_size)
        if isinstance(images, torch.Tensor):
            if images.dim() != 5 or images.size(1) != 3:
                raise ValueError(f"expected [B, 3, T, H, W], got {tuple(images.shape)}")
            frames = images.float().transpose(1, 2).flatten(0, 1)
            frames = F.interpolate(frames, size=size, mode="bicubic", align_corners=False)
        else:  # clips of different sizes are resized one by one
            frames = torch.cat(
                [F.interpolate(v.float().transpose(0, 1), size=size, mode="bicubic", align_corners=False) for v in images]
            )
        frames = frames * 0.5 + 0.5
        mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_CLIP_STD, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
        return (frames - mean) / std

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> transformer input tokens `[N, 257, dim]` (after the pre-norm)."""
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(pixels.to(dtype)).flatten(2).transpose(1, 2)
        cls = self.cls_embedding.to(dtype).expand(x.size(0), -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding.to(dtype)
        return self.pre_norm(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels `[N, 3, S, S]` -> tokens of the penultimate block `[N, 257, dim]`."""
        x = self.embed(pixels)
        for block in self.transformer[:-1]:
            x = block(x)
        return x

    @torch.inference_mode()
    def encode(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Condition frames in [-1, 1] `[B, 3, T, H, W]` -> CLIP context `[B*T, 257, dim]` in the weights' dtype."""
        pixels = self.preprocess(images).to(self.pos_embedding.device)
        return self(pixels)
