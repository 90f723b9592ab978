"""The building blocks of Hybrid Transformer Demucs (Demucs v4, `htdemucs`), named as its checkpoint names them.

The network has two U-Nets side by side, one over the spectrogram (complex values as channels, convolutions
along frequency) and one over the waveform, that meet in a cross-domain transformer at the bottom. Every
attribute name below is a segment of a key in the published state dict (`encoder.0.dconv.layers.1.3.weight`,
`crosstransformer.layers_t.1.cross_attn.in_proj_weight`, ...), which is why the residual branch is an
`nn.Sequential` with placeholder slots for its parameter-free steps: the slot numbers are part of the keys.

Only what `htdemucs` uses is built: no group norms in the U-Nets (they start at layer 4 of 4), no frequency
band splitting, no sparse attention. Published facts followed here: GELU is the exact (erf) form, every norm
has eps 1e-5, the transformer normalises before each block and after each layer (a one-group norm over
tokens and channels), and each residual is scaled per channel (LayerScale).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LayerScale",
    "ResidualBranch",
    "EncoderLayer",
    "DecoderLayer",
    "CrossDomainTransformer",
    "sin_embedding_1d",
    "sin_embedding_2d",
]


class LayerScale(nn.Module):
    """A learned per-channel factor on a residual; `channel_last` for (B, T, C) tokens, else (B, C, T)."""

    def __init__(self, channels: int, init: float = 1e-4, channel_last: bool = False) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale if self.channel_last else x * self.scale[:, None]


class ResidualBranch(nn.Module):
    """`dconv`: `depth` residual steps, each dilated conv (squeezed to channels/compress) -> norm -> GELU ->
    1x1 conv to 2x channels -> norm -> GLU -> LayerScale, the dilation doubling per step; on (N, C, T)."""

    def __init__(self, channels: int, compress: int = 8, depth: int = 2, init: float = 1e-3) -> None:
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList()
        for d in range(depth):
            dilation = 2**d
            self.layers.append(
                nn.Sequential(
                    nn.Conv1d(channels, hidden, 3, dilation=dilation, padding=dilation),
                    nn.GroupNorm(1, hidden),
                    nn.GELU(),
                    nn.Conv1d(hidden, 2 * channels, 1),
                    nn.GroupNorm(1, 2 * channels),
                    nn.GLU(1),
                    LayerScale(channels, init),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.layers:
            x = x + step(x)
        return x


def _per_frequency(fn, y: torch.Tensor) -> torch.Tensor:
    """Apply a (N, C, T) module to each frequency row of a (B, C, F, T) tensor."""
    b, c, f, t = y.shape
    rows = y.permute(0, 2, 1, 3).reshape(b * f, c, t)
    return fn(rows).view(b, f, c, t).permute(0, 2, 1, 3)


class EncoderLayer(nn.Module):
    """Strided conv (over frequency: kernel [k, 1]; over time: k) -> GELU -> residual branch -> 1x1 conv + GLU.

    `pad` pads by kernel/4 each side so that the output is exactly the input divided by the stride; the time
    branch first pads its input on the right up to a multiple of the stride."""

    def __init__(self, chin: int, chout: int, *, freq: bool, kernel_size: int = 8, stride: int = 4,
                 dconv: bool = True, dconv_compress: int = 8, dconv_depth: int = 2, dconv_init: float = 1e-3) -> None:
        super().__init__()
        self.freq, self.stride = freq, stride
        pad = kernel_size // 4
        if freq:
            self.conv: nn.Module = nn.Conv2d(chin, chout, (kernel_size, 1), (stride, 1), (pad, 0))
            self.rewrite: nn.Module = nn.Conv2d(chout, 2 * chout, 1)
        else:
            self.conv = nn.Conv1d(chin, chout, kernel_size, stride, pad)
            self.rewrite = nn.Conv1d(chout, 2 * chout, 1)
        self.dconv = ResidualBranch(chout, dconv_compress, dconv_depth, dconv_init) if dconv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.freq and x.shape[-1] % self.stride:
            x = F.pad(x, (0, self.stride - x.shape[-1] % self.stride))
        y = F.gelu(self.conv(x))
        if self.dconv is not None:
            y = _per_frequency(self.dconv, y) if self.freq else self.dconv(y)
        return F.glu(self.rewrite(y), dim=1)


class DecoderLayer(nn.Module):
    """Skip added -> conv (3 wide: 3x3 over frequency and time, or 3 over time) + GLU -> residual branch ->
    transposed strided conv, trimmed back to the encoder's input size -> GELU (not after the last layer)."""

    def __init__(self, chin: int, chout: int, *, freq: bool, last: bool = False, kernel_size: int = 8,
                 stride: int = 4, context: int = 1, dconv: bool = True, dconv_compress: int = 8,
                 dconv_depth: int = 2, dconv_init: float = 1e-3) -> None:
        super().__init__()
        self.freq, self.last, self.chin = freq, last, chin
        self.pad = kernel_size // 4
        if freq:
            self.conv_tr: nn.Module = nn.ConvTranspose2d(chin, chout, (kernel_size, 1), (stride, 1))
            self.rewrite: nn.Module = nn.Conv2d(chin, 2 * chin, 1 + 2 * context, 1, context)
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
            self.rewrite = nn.Conv1d(chin, 2 * chin, 1 + 2 * context, 1, context)
        self.dconv = ResidualBranch(chin, dconv_compress, dconv_depth, dconv_init) if dconv else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor, length: int) -> torch.Tensor:
        y = F.glu(self.rewrite(x + skip), dim=1)
        if self.dconv is not None:
            y = _per_frequency(self.dconv, y) if self.freq else self.dconv(y)
        z = self.conv_tr(y)
        if self.freq:
            z = z[..., self.pad : -self.pad, :]
        else:
            z = z[..., self.pad : self.pad + length]
        return z if self.last else F.gelu(z)


# -- the cross-domain transformer -------------------------------------------------------------------------


def sin_embedding_1d(length: int, dim: int, max_period: float = 10000.0, device=None) -> torch.Tensor:
    """(length, dim) positions for the waveform tokens: [cos | sin] halves, periods max_period^(i/(dim/2-1))."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    half = dim // 2
    idx = torch.arange(half, device=device, dtype=torch.float32)[None, :]
    phase = pos / (max_period ** (idx / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def sin_embedding_2d(dim: int, height: int, width: int, max_period: float = 10000.0, device=None) -> torch.Tensor:
    """(dim, height, width) positions for the spectrogram tokens: the first half of the channels encode the
    time position (width) as interleaved sin/cos, the second half the frequency position (height)."""
    if dim % 4:
        raise ValueError(f"a 2-D sin embedding needs a channel count divisible by 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(torch.arange(0.0, half, 2, device=device) * -(math.log(max_period) / half))  # (half/2,)
    pos_w = torch.arange(0.0, width, device=device)[:, None] * freqs  # (W, half/2)
    pos_h = torch.arange(0.0, height, device=device)[:, None] * freqs  # (H, half/2)
    pe = torch.zeros(dim, height, width, device=device)
    pe[0:half:2] = torch.sin(pos_w).t()[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(pos_w).t()[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(pos_h).t()[:, :, None].expand(-1, -1, width)
    pe[half + 1 :: 2] = torch.cos(pos_h).t()[:, :, None].expand(-1, -1, width)
    return pe


class Attention(nn.Module):
    """Multi-head attention with one packed q/k/v projection (`in_proj_weight` [3d, d]) and `out_proj`."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, n, d = q.shape
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)

        def heads(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            return F.linear(x, w, bias).view(b, x.shape[1], self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q, wq, bq), heads(kv, wk, bk), heads(kv, wv, bv))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


def _token_group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """A one-group norm over all tokens and channels of each item; x is (B, T, C)."""
    return norm(x.transpose(1, 2)).transpose(1, 2)


class _Block(nn.Module):
    """Shared parts of a transformer layer: feed-forward, norms, LayerScales (pre-norm, GELU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_out = nn.GroupNorm(1, dim)
        self.gamma_1 = LayerScale(dim, channel_last=True)
        self.gamma_2 = LayerScale(dim, channel_last=True)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class SelfLayer(_Block):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__(dim, hidden)
        self.self_attn = Attention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.gamma_1(self.self_attn(h, h))
        x = x + self.gamma_2(self.feed_forward(self.norm2(x)))
        return _token_group_norm(self.norm_out, x)


class CrossLayer(_Block):
    """Queries from this branch, keys and values from the other (norm1 on the queries, norm2 on the other)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__(dim, hidden)
        self.cross_attn = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma_1(self.cross_attn(self.norm1(x), self.norm2(other)))
        x = x + self.gamma_2(self.feed_forward(self.norm3(x)))
        return _token_group_norm(self.norm_out, x)


class CrossDomainTransformer(nn.Module):
    """`crosstransformer`: per branch, self-attention layers at even indices and cross-attention layers at odd
    ones (`layers` for the spectrogram tokens, `layers_t` for the waveform tokens), after an input LayerNorm
    and sin positions (2-D over frequency x time for the spectrogram, 1-D for the waveform)."""

    def __init__(self, dim: int, heads: int = 8, layers: int = 5, hidden_scale: float = 4.0,
                 max_period: float = 10000.0) -> None:
        super().__init__()
        hidden = int(dim * hidden_scale)
        self.max_period = max_period
        self.norm_in = nn.LayerNorm(dim)
        self.norm_in_t = nn.LayerNorm(dim)
        make = lambda i: SelfLayer(dim, heads, hidden) if i % 2 == 0 else CrossLayer(dim, heads, hidden)  # noqa: E731
        self.layers = nn.ModuleList(make(i) for i in range(layers))
        self.layers_t = nn.ModuleList(make(i) for i in range(layers))

    def forward(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, fr, t1 = x.shape
        pos2 = sin_embedding_2d(c, fr, t1, self.max_period, x.device).to(x.dtype)
        # tokens ordered time-major, frequency-minor: (B, T1*Fr, C)
        x = self.norm_in(x.permute(0, 3, 2, 1).reshape(b, t1 * fr, c))
        x = x + pos2.permute(2, 1, 0).reshape(1, t1 * fr, c)
        xt = xt.transpose(1, 2)
        xt = self.norm_in_t(xt) + sin_embedding_1d(xt.shape[1], c, self.max_period, xt.device).to(xt.dtype)[None]
        for i, (layer, layer_t) in enumerate(zip(self.layers, self.layers_t)):
            if i % 2 == 0:
                x, xt = layer(x), layer_t(xt)
            else:
                x, xt = layer(x, xt), layer_t(xt, x)
        x = x.reshape(b, t1, fr, c).permute(0, 3, 2, 1)
        return x, xt.transpose(1, 2)
