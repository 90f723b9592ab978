"""wav2vec2's encoder in plain torch, with transformers' ``Wav2Vec2Model`` tensor names.

Why our own: a cold ``import transformers`` (its modeling stack pulls in torch.distributed and the hub client) took
13.4 s of a 34 s cold start on an H200 host (bench/README.md section 16), and the engine needs only this encoder
from it. Names, shapes and arithmetic follow the published architecture (conv feature encoder, feature projection,
weight-normed positional convolution, post- or pre-LN transformer layers), so every ``save_pretrained`` checkpoint
loads unchanged; parity with transformers' module is tested (tests/engine/test_wav2vec2.py) and with upstream's
golden tensors through the embedder.

The positional convolution's weight norm is folded into a plain weight at load (inference never changes g or v).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.audio_io import SAMPLE_RATE

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
_NORMS = ("group", "layer")
# Folded into `encoder.pos_conv_embed.conv.weight` at load; both spellings transformers has written.
WEIGHT_NORM_G = ("weight_g", "parametrizations.weight.original0")
WEIGHT_NORM_V = ("weight_v", "parametrizations.weight.original1")
POS_CONV = "encoder.pos_conv_embed.conv."


class Wav2Vec2ConfigError(ValueError):
    """config.json / preprocessor_config.json describe something this encoder does not implement."""


@dataclass(frozen=True)
class Wav2Vec2Config:
    """The fields of transformers' ``Wav2Vec2Config`` the encoder reads (their defaults are transformers')."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> Wav2Vec2Config:
        if not isinstance(data, dict):
            raise Wav2Vec2ConfigError("config is not a JSON object")
        if data.get("adapter_attn_dim"):
            raise Wav2Vec2ConfigError("attention adapters (adapter_attn_dim) are not supported")
        names = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        try:
            cfg = cls(**kw)
        except TypeError as exc:
            raise Wav2Vec2ConfigError(str(exc)) from exc
        cfg.check()
        return cfg

    @classmethod
    def from_json_file(cls, path: str | Path) -> Wav2Vec2Config:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Wav2Vec2ConfigError(f"unreadable config: {exc}") from exc
        return cls.from_dict(data)

    def check(self) -> None:
        ints = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "num_conv_pos_embeddings", "num_conv_pos_embedding_groups")
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise Wav2Vec2ConfigError(f"{name} must be a positive integer, not {v!r}")
        convs = (self.conv_dim, self.conv_stride, self.conv_kernel)
        if not all(isinstance(c, tuple) and c and all(isinstance(x, int) and x >= 1 for x in c) for c in convs):
            raise Wav2Vec2ConfigError("conv_dim, conv_stride and conv_kernel must be lists of positive integers")
        if not len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel):
            raise Wav2Vec2ConfigError("conv_dim, conv_stride and conv_kernel must have the same length")
        if self.hidden_size % self.num_attention_heads:
            raise Wav2Vec2ConfigError("hidden_size must be a multiple of num_attention_heads")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise Wav2Vec2ConfigError("hidden_size must be a multiple of num_conv_pos_embedding_groups")
        if self.feat_extract_norm not in _NORMS:
            raise Wav2Vec2ConfigError(f"feat_extract_norm must be one of {_NORMS}, not {self.feat_extract_norm!r}")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise Wav2Vec2ConfigError(f"{name} {getattr(self, name)!r} is not one of {sorted(_ACTIVATIONS)}")


@dataclass(frozen=True)
class WaveformNormalizer:
    """The feature extractor's only work at inference: per-utterance zero mean, unit variance (float32)."""

    do_normalize: bool = True
    sampling_rate: int = SAMPLE_RATE

    @classmethod
    def from_folder(cls, folder: Path, sampling_rate: int) -> WaveformNormalizer:
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return cls(sampling_rate=sampling_rate)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Wav2Vec2ConfigError(f"unreadable preprocessor config: {exc}") from exc
        if not isinstance(data, dict):
            raise Wav2Vec2ConfigError("preprocessor config is not a JSON object")
        if data.get("feature_size", 1) != 1:
            raise Wav2Vec2ConfigError(f"feature_size must be 1 (raw waveform), not {data.get('feature_size')!r}")
        if data.get("sampling_rate", sampling_rate) != sampling_rate:
            raise Wav2Vec2ConfigError(f"sampling_rate must be {sampling_rate}, not {data.get('sampling_rate')!r}")
        if not isinstance(data.get("do_normalize", True), bool):
            raise Wav2Vec2ConfigError("do_normalize must be true or false")
        return cls(do_normalize=data.get("do_normalize", True), sampling_rate=sampling_rate)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        if not self.do_normalize:
            return x
        return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


class _ConvLayer(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config, i: int) -> None:
        super().__init__()
        c_in = cfg.conv_dim[i - 1] if i > 0 else 1
        c_out = cfg.conv_dim[i]
        self.conv = nn.Conv1d(c_in, c_out, cfg.conv_kernel[i], stride=cfg.conv_stride[i], bias=cfg.conv_bias)
        self.norm_kind = "layer" if cfg.feat_extract_norm == "layer" else ("group" if i == 0 else None)
        if self.norm_kind == "group":
            self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True)
        elif self.norm_kind == "layer":
            self.layer_norm = nn.LayerNorm(c_out, elementwise_affine=True)
        self.act = _ACTIVATIONS[cfg.feat_extract_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_kind == "group":
            x = self.layer_norm(x)
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.act(x)


class FeatureEncoder(nn.Module):
    """Raw waveform `[B, n]` -> conv features `[B, C, T]` (about 50 per second at the default strides)."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(_ConvLayer(cfg, i) for i in range(len(cfg.conv_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, C]` -> `[B, T, hidden]`."""
        return self.projection(self.layer_norm(x))


class PositionalConv(nn.Module):
    """Grouped convolution over time added to the input (the weight norm is folded in by the loader)."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        self.conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2,
                              groups=cfg.num_conv_pos_embedding_groups)
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel with k//2 padding yields one step too many
        self.act = _ACTIVATIONS[cfg.feat_extract_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return self.act(y).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(d // self.heads))
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.act(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-LN (base models) or pre-LN (``do_stable_layer_norm``, large models) transformer layer."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.attention = Attention(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConv(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Transformer input then every layer's output (``output_hidden_states`` of transformers, L + 1 states).

        In the pre-LN variant state 0 is the un-normed input and the last state gets the final norm, as there.
        """
        h = x + self.pos_conv_embed(x)
        if self.pre_norm:
            states = []
            for layer in self.layers:
                states.append(h)
                h = layer(h)
            return [*states, self.layer_norm(h)]
        h = self.layer_norm(h)
        states = [h]
        for layer in self.layers:
            h = layer(h)
            states.append(h)
        return states


class Wav2Vec2Encoder(nn.Module):
    """``Wav2Vec2Model`` without the pretraining parts: ``feature_extractor``, ``feature_projection``, ``encoder``."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = Encoder(config)


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` with the norm over every dim but the last (transformers' ``weight_norm(dim=2)``)."""
    return torch._weight_norm(v, g, 2)
