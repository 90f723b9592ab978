"""umT5-xxl text encoder (encoder half only) as used by InfiniteTalk / Wan2.1.

Module attribute names mirror the flat state dict of `models_t5_umt5-xxl-enc-bf16.pth`
so that file loads strictly with no key conversion (242 keys at full size). The maths
follows the reference encoder: unscaled attention with a per-block bidirectional
relative-position bias, gated tanh-GELU feed-forward, RMS norm without mean removal.
"""
from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "T5Config",
    "T5RMSNorm",
    "RelativePositionBias",
    "UMT5Encoder",
    "T5TextEncoder",
    "clean_prompt",
    "load_tokenizer",
    "write_tiny_tokenizer",
]

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


@dataclass(frozen=True)
class T5Config:
    """Sizes of the encoder; defaults are the full umT5-xxl checkpoint."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    shared_pos: bool = False
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim_attn % self.num_heads:
            raise ValueError(f"dim_attn {self.dim_attn} not divisible by num_heads {self.num_heads}")
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ValueError("num_buckets must be an even number >= 4 (bidirectional buckets)")

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads

    @classmethod
    def tiny(cls, **overrides: Any) -> T5Config:
        """Small sizes for tests and the tiny-model builder (the shape of the golden case)."""
        base = dict(vocab_size=64, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2, num_buckets=32)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_factory_overrides(cls, overrides: Mapping[str, Any]) -> T5Config:
        """Config from the keyword names of the reference `umt5_xxl(...)` factory (e.g. `encoder_layers`)."""
        renames = {"encoder_layers": "num_layers"}
        ignored = {"decoder_layers", "dropout", "encoder_only", "return_tokenizer", "dtype", "device"}
        own = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in overrides.items():
            if key in ignored:
                continue
            name = renames.get(key, key)
            if name not in own:
                raise ValueError(f"unknown T5 factory override {key!r}")
            kwargs[name] = value
        return cls(**kwargs)


def _embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding that skips its normal_ init on the meta device.

    On meta, `normal_` is routed through torch's Python reference kernels, whose first use
    imports seconds of modules; on real devices torch's default init is kept.
    """
    emb = nn.Embedding(num, dim, _weight=torch.empty(num, dim))
    if not emb.weight.is_meta:
        emb.reset_parameters()
    return emb


class T5RMSNorm(nn.Module):
    """Scale-only RMS norm; the statistic is taken in float32 even for half-precision weights."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.to(self.weight.dtype)
        return self.weight * y


class RelativePositionBias(nn.Module):
    """Bidirectional T5 relative-position buckets -> per-head additive attention bias.

    Half the buckets cover keys after the query, half keys at or before it; in each half the
    first quarter of buckets are exact distances, the rest grow logarithmically up to
    `max_distance` and saturate at the last bucket.
    """

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int = 128) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.num_heads = num_heads
        self.max_distance = max_distance
        self.embedding = _embedding(num_buckets, num_heads)

    def buckets(self, lq: int, lk: int, device: torch.device | None = None) -> torch.Tensor:
        device = device if device is not None else self.embedding.weight.device
        rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
        half = self.num_buckets // 2
        exact = half // 2
        offset = (rel > 0).long() * half
        dist = rel.abs()
        # Same float32 operation order as the reference so the truncation lands identically.
        far = torch.log(dist.clamp(min=1).float() / exact) / math.log(self.max_distance / exact) * (half - exact)
        far = (exact + far.long()).clamp(max=half - 1)
        return offset + torch.where(dist < exact, dist, far)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        """Bias `[1, heads, lq, lk]` in the embedding's dtype."""
        e = self.embedding(self.buckets(lq, lk))
        return e.permute(2, 0, 1).unsqueeze(0).contiguous()


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        n, c = self.num_heads, self.head_dim
        q = self.q(x).view(b, l, n, c).transpose(1, 2)
        k = self.k(x).view(b, l, n, c).transpose(1, 2)
        v = self.v(x).view(b, l, n, c).transpose(1, 2)
        # T5 folds the 1/sqrt(d) factor into its weights, hence scale 1.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(b, l, n * c))


class T5FeedForward(nn.Module):
    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    # Only float16 can overflow in the residual stream; bf16/fp32 have the range.
    if x.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.norm1 = T5RMSNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5RMSNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = (
            None if cfg.shared_pos else RelativePositionBias(cfg.num_buckets, cfg.num_heads, cfg.max_distance)
        )

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None, shared_bias: torch.Tensor | None) -> torch.Tensor:
        bias = shared_bias if self.pos_embedding is None else self.pos_embedding(x.size(1), x.size(1))
        bias = bias.to(x.dtype)
        if mask_bias is not None:
            bias = bias + mask_bias
        x = _clamp_fp16(x + self.attn(self.norm1(x), bias))
        return _clamp_fp16(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """Token ids -> contextual embeddings `[B, L, dim]` (padding rows are computed, not zeroed)."""

    def __init__(self, cfg: T5Config | None = None) -> None:
        super().__init__()
        cfg = cfg or T5Config()
        self.cfg = cfg
        self.token_embedding = _embedding(cfg.vocab_size, cfg.dim)
        if cfg.shared_pos:
            self.pos_embedding = RelativePositionBias(cfg.num_buckets, cfg.num_heads, cfg.max_distance)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = T5RMSNorm(cfg.dim, cfg.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(ids)
        b, l = ids.shape
        mask_bias = None
        if mask is not None:
            # Masked keys get the most negative finite value (not -inf) so no row can turn into NaN;
            # the relative bias added on top cannot move it away from that floor.
            mask_bias = torch.zeros(b, 1, 1, l, dtype=x.dtype, device=x.device)
            mask_bias.masked_fill_(mask.view(b, 1, 1, l) == 0, torch.finfo(x.dtype).min)
        shared = self.pos_embedding(l, l) if self.cfg.shared_pos else None
        for block in self.blocks:
            x = block(x, mask_bias, shared)
        return self.norm(x)

    def load_original_state_dict(self, sd: Mapping[str, torch.Tensor], assign: bool = False) -> None:
        """Strictly load the flat dict of `models_t5_umt5-xxl-enc-bf16.pth` (names are identical)."""
        self.load_state_dict(dict(sd), strict=True, assign=assign)

    @classmethod
    def from_original_checkpoint(
        cls,
        path: str | Path,
        cfg: T5Config | None = None,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> UMT5Encoder:
        """Build on the meta device and fill strictly from the original `.pth` (memory-mapped, one tensor
        at a time); a bad file or key is named in a WeightLoadError."""
        from worker.engine.formats.loaders import load_module

        with torch.device("meta"):
            model = cls(cfg)
        load_module(model, [path], device=device, dtype=dtype)
        return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- tokenizer side

_WS = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Prompt cleaning as the reference pipeline does it before tokenising.

    Steps: `ftfy.fix_text` (repairs mojibake, normalises quotes/ligatures/width, NFC), HTML
    unescaping applied twice (so doubly-escaped entities such as `&amp;amp;` resolve), strip,
    then every whitespace run becomes one space and the ends are stripped again. When ftfy is
    not installed only its NFC normalisation is reproduced, which is identical for clean text.
    """
    try:
        import ftfy  # type: ignore[import-not-found]

        text = ftfy.fix_text(text)
    except ImportError:
        text = unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text)).strip()
    return _WS.sub(" ", text).strip()


def load_tokenizer(folder: str | Path) -> Any:
    """A folder with `tokenizer.json` is read by the `tokenizers` library alone (importing transformers
    costs ~13 s of a cold start); only a folder without one (e.g. just `spiece.model`) needs
    transformers to convert it."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        from worker.engine.models.text_tokenizer import TokenizerJson

        return TokenizerJson.from_folder(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


class T5TextEncoder:
    """Tokeniser + encoder: prompts -> one `[L_i, dim]` embedding per prompt, cut to its real length."""

    def __init__(self, model: UMT5Encoder, tokenizer: Any, text_len: int = 512) -> None:
        self.model = model
        self.text_len = text_len
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(tokenizer)
        if getattr(tokenizer, "padding_side", "right") != "right":
            # encode_ids keeps each row's first n positions, as upstream does: pads must come last
            raise ValueError(f"the umT5 tokenizer must pad on the right, not {tokenizer.padding_side!r}")
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids and attention mask, both `[B, text_len]` int64, padded to text_len, end token added."""
        if isinstance(texts, str):
            texts = [texts]
        out = self.tokenizer(
            [clean_prompt(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_ids"].long(), out["attention_mask"].long()

    @torch.inference_mode()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        ids, mask = ids.to(self.device), mask.to(self.device)
        lens = mask.gt(0).sum(dim=1).tolist()
        out = self.model(ids, mask)
        return [row[:n] for row, n in zip(out, lens)]

    def encode(self, texts: Sequence[str]) -> list[torch.Tensor]:
        ids, mask = self.tokenize(texts)
        return self.encode_ids(ids, mask)


# --------------------------------------------------------------------------- tiny tokenizer

_TINY_LOWER = "abcdefghijklmnopqrstuvwxyz"
_TINY_REST = ".,!?'&-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TINY_WORDS = ("the", "a", "is", "and", "of", "to", "in", "man", "woman", "talk", "smile", "speak")


def write_tiny_tokenizer(folder: str | Path, vocab_size: int = 64) -> Path:
    """Write a small umT5-like tokenizer folder loadable with `AutoTokenizer.from_pretrained`.

    Same conventions as google/umt5-xxl where they matter to the encoder: a unigram model
    with Metaspace pre-tokenisation, `<pad>`=0, `</s>`=1 appended to every sequence,
    `<unk>`=2. Pieces, cut at `vocab_size`: "▁", lowercase letters, a few whole words,
    punctuation/digits/uppercase, then filler words; anything else maps to `<unk>`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 5:
        raise ValueError("vocab_size must be at least 5")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces: list[tuple[str, float]] = [("\u2581", -2.0)]
    pieces += [(ch, -5.0) for ch in _TINY_LOWER]
    pieces += [("\u2581" + w, -1.0) for w in _TINY_WORDS]
    pieces += [(ch, -5.0) for ch in _TINY_REST]
    k = 0
    while len(specials) + len(pieces) < vocab_size:
        pieces.append((f"\u2581w{k}", -3.0))
        k += 1
    vocab = specials + pieces[: vocab_size - len(specials)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=UNK_ID, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS_ID)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    fast.save_pretrained(str(folder))
    # transformers 5 records its own backend class name, which 4.x cannot resolve; the
    # generic fast-tokenizer name loads the same tokenizer.json under both.
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return folder
