"""Voice isolation with Hybrid Transformer Demucs (Demucs v4 `htdemucs`), loaded strictly from one file.

`audio_isolation` jobs run each speaker's file through this network and keep its `vocals` stem: speech with
the music and noise taken out drives the audio encoder. The published model separates 44.1 kHz stereo into
drums, bass, other and vocals; it was trained on 7.8 s segments and only runs on exactly that length.

Published facts this follows (architecture, not code): STFT with n_fft 4096, hop 1024, Hann window,
normalised, the input reflect-padded by 1.5 hops each side so that frames line up with the waveform branch
(frames 2..2+L/hop kept, the Nyquist bin dropped); complex bins as channels (re, im per audio channel); the
spectrogram and the waveform each normalised by their own mean and (unbiased) std; four encoder layers per
branch (kernel 8, stride 4, channels 48 doubling), frequency embedding after the first spectrogram layer,
384 -> 512 channel projections around a 5-layer cross-domain transformer, decoders mirroring the encoders;
the output is the spectrogram branch's iSTFT plus the waveform branch. Long audio is cut into segments with
25% overlap, each centred in its segment-long window (real audio as context where there is some, zeros past
the ends) and blended with triangular weights; the whole track is first normalised by the mean and std of
its mono mix, as the reference separation does. The random time shifts of the reference ("shift trick")
are not used: the result is deterministic.

Weights: `weights isolation` (tools/weights) converts the published `.th` pickle to safetensors once; the
worker reads only that file (`VoiceIsolator.from_file`), strictly: every key of the network, no other key,
every shape, or a WeightLoadError naming the key.
"""
from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.errors import WeightLoadError
from worker.engine.models.separation_layers import CrossDomainTransformer, DecoderLayer, EncoderLayer

__all__ = [
    "SEPARATION_SAMPLE_RATE",
    "SeparationConfig",
    "HTDemucs",
    "separate",
    "load_separation_strict",
    "VoiceIsolator",
]

SEPARATION_SAMPLE_RATE = 44100
SOURCES = ("drums", "bass", "other", "vocals")


@dataclass(frozen=True)
class SeparationConfig:
    """The hyper-parameters that shape the network; `published()` is the released `htdemucs`."""

    sources: tuple[str, ...] = SOURCES
    audio_channels: int = 2
    channels: int = 48
    growth: int = 2
    depth: int = 4
    nfft: int = 4096
    kernel_size: int = 8
    stride: int = 4
    context: int = 1
    dconv_compress: int = 8
    dconv_depth: int = 2
    freq_emb_scale: float = 0.2
    freq_emb_lr_scale: float = 10.0  # the embedding is stored divided by this and multiplied back when used
    bottom_channels: int = 512
    t_layers: int = 5
    t_heads: int = 8
    t_hidden_scale: float = 4.0
    t_max_period: float = 10000.0
    samplerate: int = SEPARATION_SAMPLE_RATE
    segment_samples: int = 343980  # 39/5 s at 44.1 kHz, the training segment

    @classmethod
    def published(cls) -> "SeparationConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "SeparationConfig":
        """The same structure with few channels and a 1 s segment: for tests on a CPU."""
        return cls(channels=8, bottom_channels=16, t_heads=2, segment_samples=SEPARATION_SAMPLE_RATE)

    @property
    def hop(self) -> int:
        return self.nfft // 4

    def to_dict(self) -> dict:
        return asdict(self)


class HTDemucs(nn.Module):
    """One segment in, every source out: (B, channels, segment_samples) -> (B, sources, channels, segment)."""

    def __init__(self, cfg: SeparationConfig) -> None:
        super().__init__()
        self.cfg = cfg
        freqs = cfg.nfft // 2
        for _ in range(cfg.depth - 1):
            freqs //= cfg.stride
        if freqs <= cfg.kernel_size:
            raise ValueError("the frequency axis must stay wider than the kernel down to the last layer")
        self.encoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tdecoder = nn.ModuleList()
        chin_t, chin_z = cfg.audio_channels, cfg.audio_channels * 2
        out_t = cfg.audio_channels * len(cfg.sources)
        chout = cfg.channels
        common = dict(kernel_size=cfg.kernel_size, stride=cfg.stride, dconv_compress=cfg.dconv_compress,
                      dconv_depth=cfg.dconv_depth)
        for index in range(cfg.depth):
            self.encoder.append(EncoderLayer(chin_z, chout, freq=True, **common))
            self.tencoder.append(EncoderLayer(chin_t, chout, freq=False, **common))
            dec_out_t, dec_out_z = (out_t, out_t * 2) if index == 0 else (chin_t, chin_z)
            last = index == 0
            self.decoder.insert(0, DecoderLayer(chout, dec_out_z, freq=True, last=last, context=cfg.context, **common))
            self.tdecoder.insert(0, DecoderLayer(chout, dec_out_t, freq=False, last=last, context=cfg.context, **common))
            chin_t = chin_z = chout
            chout *= cfg.growth
        bins_after_first = cfg.nfft // 2 // cfg.stride
        self.freq_emb = _FrequencyEmbedding(bins_after_first, cfg.channels)
        deepest = cfg.channels * cfg.growth ** (cfg.depth - 1)
        self.channel_upsampler = nn.Conv1d(deepest, cfg.bottom_channels, 1)
        self.channel_downsampler = nn.Conv1d(cfg.bottom_channels, deepest, 1)
        self.channel_upsampler_t = nn.Conv1d(deepest, cfg.bottom_channels, 1)
        self.channel_downsampler_t = nn.Conv1d(cfg.bottom_channels, deepest, 1)
        self.crosstransformer = CrossDomainTransformer(
            cfg.bottom_channels, cfg.t_heads, cfg.t_layers, cfg.t_hidden_scale, cfg.t_max_period
        )

    # -- spectrogram ------------------------------------------------------------------------------------

    def _window(self, device: torch.device) -> torch.Tensor:
        return torch.hann_window(self.cfg.nfft, device=device)

    def spectrogram(self, mix: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> complex (B, C, nfft/2, L/hop), frames aligned with the waveform branch."""
        hop, nfft = self.cfg.hop, self.cfg.nfft
        b, c, length = mix.shape
        frames = math.ceil(length / hop)
        pad = hop // 2 * 3
        x = F.pad(mix, (pad, pad + frames * hop - length), mode="reflect")
        z = torch.stft(x.reshape(b * c, -1), nfft, hop, window=self._window(mix.device), normalized=True,
                       center=True, return_complex=True, pad_mode="reflect")
        return z.view(b, c, z.shape[-2], z.shape[-1])[..., :-1, 2 : 2 + frames]

    def inverse_spectrogram(self, z: torch.Tensor, length: int) -> torch.Tensor:
        """complex (..., nfft/2, frames) -> (..., length): the inverse of `spectrogram`."""
        hop, nfft = self.cfg.hop, self.cfg.nfft
        z = F.pad(z, (2, 2, 0, 1))  # the two edge frames and the Nyquist bin back, as zeros
        pad = hop // 2 * 3
        total = hop * math.ceil(length / hop) + 2 * pad
        lead = z.shape[:-2]
        x = torch.istft(z.reshape(-1, *z.shape[-2:]), nfft, hop, window=self._window(z.device), normalized=True,
                        length=total, center=True)
        return x.view(*lead, -1)[..., pad : pad + length]

    # -- forward ----------------------------------------------------------------------------------------

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, _, length = mix.shape
        z = self.spectrogram(mix)
        x = torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(b, -1, z.shape[-2], z.shape[-1])
        fq, frames = x.shape[-2:]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        meant = mix.mean(dim=(1, 2), keepdim=True)
        stdt = mix.std(dim=(1, 2), keepdim=True)
        xt = (mix - meant) / (1e-5 + stdt)

        skips, skips_t, lengths_t = [], [], []
        for index, (enc, tenc) in enumerate(zip(self.encoder, self.tencoder)):
            lengths_t.append(xt.shape[-1])
            xt = tenc(xt)
            skips_t.append(xt)
            x = enc(x)
            if index == 0:
                emb = self.freq_emb(x.shape[-2], x.device).t()[None, :, :, None]
                x = x + cfg.freq_emb_scale * emb.to(x.dtype)
            skips.append(x)

        bb, c, f, t = x.shape
        x = self.channel_upsampler(x.reshape(bb, c, f * t)).view(bb, -1, f, t)
        xt = self.channel_upsampler_t(xt)
        x, xt = self.crosstransformer(x, xt)
        x = self.channel_downsampler(x.reshape(bb, -1, f * t)).view(bb, c, f, t)
        xt = self.channel_downsampler_t(xt)

        for dec, tdec in zip(self.decoder, self.tdecoder):
            x = dec(x, skips.pop(), 0)
            xt = tdec(xt, skips_t.pop(), lengths_t.pop())

        sources = len(cfg.sources)
        x = x.view(b, sources, -1, fq, frames) * std[:, None] + mean[:, None]
        spec = x.view(b, sources, -1, 2, fq, frames).permute(0, 1, 2, 4, 5, 3).contiguous()
        from_spec = self.inverse_spectrogram(torch.view_as_complex(spec.float()), length)
        from_wave = xt.view(b, sources, -1, length) * stdt[:, None] + meant[:, None]
        return from_wave + from_spec.to(from_wave.dtype)


class _FrequencyEmbedding(nn.Module):
    """`freq_emb.embedding.weight`: one learned vector per frequency row after the first layer (stored scaled
    down by the training's learning-rate boost, 10, and scaled back up here)."""

    def __init__(self, rows: int, channels: int, boost: float = 10.0) -> None:
        super().__init__()
        self.boost = boost
        self.embedding = nn.Embedding(rows, channels)
        with torch.no_grad():
            smooth = torch.cumsum(self.embedding.weight, 0) / torch.arange(1, rows + 1).sqrt()[:, None]
            self.embedding.weight.copy_(smooth / boost)

    def forward(self, rows: int, device: torch.device) -> torch.Tensor:
        return self.embedding(torch.arange(rows, device=device)) * self.boost


# -- whole tracks ---------------------------------------------------------------------------------------------


def _triangle(n: int, device: torch.device) -> torch.Tensor:
    w = torch.cat([torch.arange(1, n // 2 + 1, device=device), torch.arange(n - n // 2, 0, -1, device=device)])
    return w.float() / w.max()


@torch.no_grad()
def separate(model: HTDemucs, mix: torch.Tensor, *, overlap: float = 0.25, batch: int = 4,
             sources: tuple[str, ...] | None = None,
             on_progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """(channels, n) at the model's rate -> (len(sources), channels, n) (default: every source), segment by
    segment with overlap-add. The track and the sums stay where `mix` is (the host, for a job): only each
    batch of windows visits the model's device, so a long track costs no device memory."""
    cfg = model.cfg
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    keep = [cfg.sources.index(name) for name in (sources or cfg.sources)]
    mix = mix.to(torch.float32)
    channels, length = mix.shape
    mono = mix.mean(0)
    # the reference's normalisation by the mono mix (one sample has no spread: left unscaled)
    ref_mean, ref_std = mono.mean(), (mono.std() if length > 1 else mono.new_zeros(())) + 1e-8
    mix = (mix - ref_mean) / ref_std
    seg = cfg.segment_samples
    stride = int((1 - overlap) * seg)
    offsets = list(range(0, length, stride))
    out = mix.new_zeros(len(keep), channels, length)
    total = mix.new_zeros(length)
    weight = _triangle(seg, mix.device)
    for first in range(0, len(offsets), batch):
        group = offsets[first : first + batch]
        windows, sizes = [], []
        for offset in group:
            size = min(seg, length - offset)
            start = offset - (seg - size) // 2  # the chunk centred in its window
            lo, hi = max(0, start), min(length, start + seg)
            windows.append(F.pad(mix[:, lo:hi], (lo - start, start + seg - hi)))
            sizes.append(size)
        est = model(torch.stack(windows).to(device=device, dtype=dtype))[:, keep].float().to(mix.device)
        for k, (offset, size) in enumerate(zip(group, sizes)):
            trim = (seg - size) // 2
            out[..., offset : offset + size] += weight[:size] * est[k, ..., trim : trim + size]
            total[offset : offset + size] += weight[:size]
        if on_progress is not None:
            on_progress(min(1.0, (first + len(group)) / len(offsets)))
    out = out / total
    return out * ref_std + ref_mean


# -- loading ------------------------------------------------------------------------------------------------


def check_keys_and_shapes(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], src: str | Path) -> None:
    """Exactly htdemucs's keys with its shapes, else a WeightLoadError naming the first key that differs."""
    for key, ref in want.items():
        if key not in got:
            raise WeightLoadError(str(src), key, "missing")
        if tuple(got[key].shape) != tuple(ref.shape):
            raise WeightLoadError(str(src), key, f"shape {tuple(got[key].shape)}, htdemucs needs {tuple(ref.shape)}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise WeightLoadError(str(src), extra[0], "not part of htdemucs")


def load_separation_strict(model: nn.Module, path: str | Path) -> None:
    """Every key of `model` from the safetensors file at `path`, with its shape, and no other key."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise WeightLoadError(str(p), None, "isolation weights not found (convert the published htdemucs .th "
                              "with `infinitetalk weights isolation`)")
    want = model.state_dict()
    got: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            for key in f.keys():
                got[key] = f.get_tensor(key)
    except Exception as exc:  # noqa: BLE001 - truncated or not a safetensors file
        raise WeightLoadError(str(p), None, f"cannot read the weights: {exc}") from exc
    check_keys_and_shapes(got, want, p)
    model.load_state_dict({k: v.to(want[k].dtype) for k, v in got.items()}, strict=True)


class VoiceIsolator:
    """The loaded network plus what a job needs: any rate and channel count in, the vocals stem out."""

    def __init__(self, model: HTDemucs, device: torch.device, batch: int = 4) -> None:
        self.model = model.eval()
        self.device = device
        self.batch = batch
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu", cfg: SeparationConfig | None = None,
                  variant: str = "published") -> "VoiceIsolator":
        """`variant` names the configuration when `cfg` is not given: published, or tiny (the test model)."""
        dev = torch.device(device if torch.cuda.is_available() or str(device) == "cpu" else "cpu")
        model = HTDemucs(cfg or {"published": SeparationConfig.published, "tiny": SeparationConfig.tiny}[variant]())
        load_separation_strict(model, path)
        return cls(model.to(dev), dev)

    @property
    def sample_rate(self) -> int:
        return self.model.cfg.samplerate

    def vocals(self, audio: np.ndarray, sr: int, on_progress: Callable[[float], None] | None = None) -> np.ndarray:
        """float32 (channels, n) or (n,) at `sr` -> the vocals stem, float32 (2, m) at 44.1 kHz.

        Mono is duplicated to stereo and more than two channels keep the first two, as the model's own
        tools do; the rate is converted with soxr (high quality)."""
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        want = self.model.cfg.audio_channels
        x = np.repeat(x, want, axis=0) if x.shape[0] == 1 else x[:want]
        if sr != self.sample_rate:
            import soxr

            x = np.ascontiguousarray(soxr.resample(x.T, sr, self.sample_rate, quality="HQ").T, dtype=np.float32)
        with self._lock:
            stems = separate(self.model, torch.from_numpy(x), batch=self.batch, sources=("vocals",),
                             on_progress=on_progress)
        return stems[0].numpy().astype(np.float32, copy=False)
