"""The tiny model: every component at toy size with deterministic random weights.

It is written once to a cache folder in the same file formats and names as the published
checkpoints (7 DiT shards + adapter safetensors, T5/CLIP/VAE `.pth`, a tokenizer folder, a
wav2vec2 `save_pretrained` folder, a Kokoro TTS folder), so the production loaders are what runs it. A whole job
then runs on a CPU in seconds: the embedded default for local runs and tests.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from worker.engine.models.clip_visual import CLIPVisionConfig, CLIPVisionTower
from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT
from worker.engine.formats.layout import (
    CLIP_FILE,
    COMPONENTS_FILE,
    DIT_CONFIG,
    DIT_SHARD_COUNT,
    T5_FILE,
    T5_TOKENIZER_DIR,
    VAE_FILE,
    CheckpointLayout,
    dit_shard_names,
    published_layout,
    is_adapter_key,
)
from worker.engine.models.t5 import T5Config, UMT5Encoder, write_tiny_tokenizer
from worker.engine.models.vae import VAEConfig, WanVAEModel

TINY_VERSION = "v3"  # v3: loras/ (tiny lightx2v and FusioniX distill LoRAs)
# kokoro/ (TTS) is versioned on its own: it is ~240 MB, so it is written on first TTS use only.
TINY_KOKORO_VERSION = "k1"
TINY_SEED = 20261125

TINY_T5 = T5Config.tiny()
TINY_CLIP = CLIPVisionConfig.tiny()
TINY_VAE = VAEConfig(dim=8)
TINY_WAV2VEC = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
TINY_DIT = DiTConfig(
    dim=64,
    ffn_dim=128,
    num_heads=4,
    num_layers=2,
    text_dim=TINY_T5.dim,
    text_len=64,
    freq_dim=64,
    intermediate_dim=8,
    output_dim=32,
    context_tokens=4,
    clip_dim=TINY_CLIP.dim,
    audio_layers=TINY_WAV2VEC["num_hidden_layers"],
    audio_dim=TINY_WAV2VEC["hidden_size"],
)


# The names conf/sampler/{turbo,fast}.yaml give, so the presets run on the tiny model unchanged.
TINY_LORAS = {
    "lightx2v_I2V_14B_480p_cfg_step_distill_rank128_bf16.safetensors": "lightx2v",
    "Wan2.1_I2V_14B_FusionX_LoRA.safetensors": "fusionx",
}


# Kokoro-82M's config with every free size shrunk: ALBERT, layer count, vocoder width. The decoder's
# 1024-channel blocks, the 512-wide features (text and vocoder input) and the 128-wide style halves are fixed by the
# architecture, so this "tiny" model is still large; it is written on first TTS use only. The vocabulary covers the symbols espeak-ng's
# Kokoro mapping emits; ids stay below n_token as in the published config.
_KOKORO_SYMBOLS = (
    ';:,.!?—…"()“” '
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    "ɑɐɒæβɔɕçɖðʤəɚɛɜɟɡɥɨɪʝɯɰŋɳɲɴøɸθœɹɾɻʁɽʂʃʈʧʊʋʌɣɤχʎʒʔˈˌːʰʲ↓→↗↘ᵊᵻ"
)
TINY_KOKORO = {
    "istftnet": {
        "upsample_kernel_sizes": [20, 12],
        "upsample_rates": [10, 6],
        "gen_istft_hop_size": 5,
        "gen_istft_n_fft": 20,
        "resblock_dilation_sizes": [[1, 3, 5]],
        "resblock_kernel_sizes": [3],
        "upsample_initial_channel": 512,  # fixed: the decoder hands over 512 channels
    },
    "dim_in": 64,
    "dropout": 0.2,
    "hidden_dim": 512,  # fixed: the decoder's asr_res conv expects 512 channels
    "max_conv_dim": 512,
    "max_dur": 50,
    "multispeaker": True,
    "n_layer": 1,
    "n_mels": 80,
    "n_token": 178,
    "style_dim": 128,  # fixed: KModel slices voice rows at 128
    "text_encoder_kernel_size": 5,
    "plbert": {
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
        "num_hidden_layers": 1,
        "dropout": 0.1,
    },
    "vocab": {ch: i + 1 for i, ch in enumerate(dict.fromkeys(_KOKORO_SYMBOLS))},
}
# Published voice names, so examples naming them run on the tiny model too.
TINY_VOICES = ("af_heart", "am_michael")


def default_cache_dir() -> Path:
    root = os.environ.get("INFINITETALK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "infinitetalk")
    return Path(root) / f"tiny-{TINY_VERSION}"


def tiny_layout(root: Path) -> CheckpointLayout:
    return published_layout(root)


def randomise(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights with no trivially zero or one tensor: matrices N(0, 1/fan_in), norm scales
    1 + 0.1 N, other vectors 0.05 N. Returned in state-dict order, float32, on the CPU."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, ref in module.state_dict().items():
        shape = tuple(ref.shape)
        if not ref.is_floating_point():
            out[name] = torch.zeros(shape, dtype=ref.dtype)
            continue
        if len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            if name.endswith("modulation") or fan_in == 0:
                fan_in = shape[-1]
            value = torch.randn(shape, generator=g) / math.sqrt(max(fan_in, 1))
        elif "norm" in name and name.endswith(("weight", "gamma", "scale")):
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            value = 0.05 * torch.randn(shape, generator=g)
        out[name] = value.contiguous()
    return out


def _meta(factory):
    with torch.device("meta"):
        return factory()


def _write_dit(ckpt_dir: Path, adapter_file: Path) -> None:
    sd = randomise(_meta(lambda: InfiniteTalkDiT(TINY_DIT)), TINY_SEED + 1)
    base = {k: v for k, v in sd.items() if not is_adapter_key(k)}
    adapter = {k: v for k, v in sd.items() if is_adapter_key(k)}
    names = dit_shard_names()
    keys = list(base)
    per = math.ceil(len(keys) / DIT_SHARD_COUNT)
    weight_map = {}
    for i, name in enumerate(names):
        part = {k: base[k] for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(ckpt_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (ckpt_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(v.numel() * 4 for v in base.values())}, "weight_map": weight_map})
    )
    config = {k: v for k, v in asdict(TINY_DIT).items()}
    config.update({"_class_name": "WanModel", "model_type": "i2v"})
    (ckpt_dir / DIT_CONFIG).write_text(json.dumps(config, indent=2))
    adapter_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(adapter, str(adapter_file), metadata={"format": "pt"})


def _write_t5(ckpt_dir: Path) -> None:
    sd = randomise(_meta(lambda: UMT5Encoder(TINY_T5)), TINY_SEED + 2)
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, ckpt_dir / T5_FILE)
    write_tiny_tokenizer(ckpt_dir / T5_TOKENIZER_DIR, vocab_size=TINY_T5.vocab_size)


def _write_clip(ckpt_dir: Path) -> None:
    sd = randomise(_meta(lambda: CLIPVisionTower(TINY_CLIP)), TINY_SEED + 3)
    full = {f"visual.{k}": v for k, v in sd.items()}
    # The published file also carries the text tower and a logit scale, which the loader must skip.
    full["textual.token_embedding.weight"] = torch.zeros(8, 4)
    full["log_scale"] = torch.tensor(4.6052)
    torch.save(full, ckpt_dir / CLIP_FILE)


def _write_vae(ckpt_dir: Path) -> None:
    torch.save(randomise(_meta(lambda: WanVAEModel(TINY_VAE)), TINY_SEED + 4), ckpt_dir / VAE_FILE)


def _write_wav2vec(folder: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(TINY_SEED + 5)
    model = Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC))
    model.save_pretrained(str(folder), safe_serialization=True)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    ).save_pretrained(str(folder))


def write_tiny_lora(path: Path, style: str, seed: int, rank: int = 4) -> None:
    """A small LoRA over every block projection in one of the published key styles.

    "lightx2v": `diffusion_model.<m>.lora_down/lora_up.weight` + `.alpha` (bf16 matrices, as the real
    file), `.diff_b` on the biases; "fusionx": `diffusion_model.<m>.lora_A/lora_B.weight`, no alpha,
    plus `.diff` on the image-key norm scales. Magnitudes stay small so the tiny model still renders.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, ref in _meta(lambda: InfiniteTalkDiT(TINY_DIT)).state_dict().items():
        if not name.startswith("blocks.") or is_adapter_key(name):
            continue
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and ref.ndim == 2:
            out_f, in_f = ref.shape
            down = torch.randn(rank, in_f, generator=g) / math.sqrt(in_f)
            up = 0.05 * torch.randn(out_f, rank, generator=g) / math.sqrt(rank)
            if style == "lightx2v":
                sd[f"diffusion_model.{module}.lora_down.weight"] = down.to(torch.bfloat16)
                sd[f"diffusion_model.{module}.lora_up.weight"] = up.to(torch.bfloat16)
                sd[f"diffusion_model.{module}.alpha"] = torch.tensor(float(rank))
            else:
                sd[f"diffusion_model.{module}.lora_A.weight"] = down
                sd[f"diffusion_model.{module}.lora_B.weight"] = up
        elif name.endswith(".bias") and style == "lightx2v":
            sd[f"diffusion_model.{module}.diff_b"] = (0.01 * torch.randn(ref.shape, generator=g)).to(torch.bfloat16)
        elif name.endswith("norm_k_img.weight") and style == "fusionx":
            sd[f"diffusion_model.{module}.diff"] = 0.01 * torch.randn(ref.shape, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={"format": "pt"})


def _write_loras(folder: Path) -> None:
    for i, (name, style) in enumerate(sorted(TINY_LORAS.items())):
        write_tiny_lora(folder / name, style, TINY_SEED + 10 + i)


def _write_kokoro(folder: Path) -> None:
    """config.json, kokoro-v1_0.pth ({component: state dict}, keys under `module.` as published)
    and voices/<name>.pt ([510, 1, 2 * style_dim] float32)."""
    from worker.engine.models.tts import KOKORO_COMPONENTS, KOKORO_CONFIG, KOKORO_MODEL_FILE, VOICES_DIR, build_kmodel

    folder.mkdir(parents=True)
    (folder / KOKORO_CONFIG).write_text(json.dumps(TINY_KOKORO, indent=2, ensure_ascii=False), encoding="utf-8")
    model = build_kmodel(TINY_KOKORO)
    ckpt = {}
    for i, comp in enumerate(KOKORO_COMPONENTS):
        sd = randomise(getattr(model, comp), TINY_SEED + 20 + i)
        if comp == "predictor":
            # Random durations would average 25 frames (0.3 s) per phoneme; a bias towards ~6
            # frames keeps the tiny voice near a speaking rate, so clip lengths stay realistic.
            sd["duration_proj.linear_layer.bias"] = torch.full_like(sd["duration_proj.linear_layer.bias"], -3.0)
        if comp == "decoder":
            # The vocoder exponentiates its magnitude branch; small output weights keep samples in range.
            sd["generator.conv_post.weight_g"] = sd["generator.conv_post.weight_g"] * 0.02
        ckpt[comp] = {f"module.{k}": v for k, v in sd.items()}
    torch.save(ckpt, folder / KOKORO_MODEL_FILE)
    voices = folder / VOICES_DIR
    voices.mkdir()
    g = torch.Generator().manual_seed(TINY_SEED + 30)
    for name in TINY_VOICES:
        torch.save(0.3 * torch.randn(510, 1, 2 * TINY_KOKORO["style_dim"], generator=g), voices / f"{name}.pt")


def write_components(ckpt_dir: Path) -> None:
    """The components file naming the tiny sizes, so the loaders build tiny modules from it (also used by
    bench/cold_start.py to describe its own sizes)."""
    (ckpt_dir / COMPONENTS_FILE).write_text(
        json.dumps(
            {
                "t5": asdict(TINY_T5),
                "t5_text_len": TINY_DIT.text_len,
                "clip": asdict(TINY_CLIP),
                "vae": {k: v for k, v in asdict(TINY_VAE).items()},
                "bucket_scale": 1 / 16,
            },
            indent=2,
        )
    )


def ensure_tiny_checkpoint(cache_dir: Path | None = None) -> CheckpointLayout:
    """Write the tiny checkpoint once (atomically: built in a temp folder, then renamed) and return its layout."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    layout = tiny_layout(root)
    stamp = root / ".complete"
    if stamp.is_file() and stamp.read_text() == TINY_VERSION:
        return layout
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root.parent))
    try:
        staged = tiny_layout(tmp)
        staged.ckpt_dir.mkdir(parents=True)
        _write_dit(staged.ckpt_dir, staged.infinitetalk_file)
        _write_t5(staged.ckpt_dir)
        _write_clip(staged.ckpt_dir)
        _write_vae(staged.ckpt_dir)
        _write_wav2vec(staged.wav2vec_dir)
        write_components(staged.ckpt_dir)
        _write_loras(tmp / "loras")
        (tmp / ".complete").write_text(TINY_VERSION)
        try:
            os.rename(tmp, root)
        except OSError:  # another process won the race, or an older/half-written version is there
            if not (stamp.is_file() and stamp.read_text() == TINY_VERSION):
                stale = root.with_name(f".stale-{root.name}-{os.getpid()}")
                os.rename(root, stale)
                shutil.rmtree(stale, ignore_errors=True)
                os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return layout


def ensure_tiny_kokoro(cache_dir: Path | None = None) -> Path:
    """The tiny Kokoro folder under the tiny root (`<root>/kokoro`), written once, atomically."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = root / "kokoro"
    stamp = folder / ".complete"
    if stamp.is_file() and stamp.read_text() == TINY_KOKORO_VERSION:
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".kokoro-", dir=root))
    try:
        _write_kokoro(tmp / "kokoro")
        (tmp / "kokoro" / ".complete").write_text(TINY_KOKORO_VERSION)
        try:
            os.rename(tmp / "kokoro", folder)
        except OSError:  # another process won the race, or a stale version is there
            if not (stamp.is_file() and stamp.read_text() == TINY_KOKORO_VERSION):
                stale = root / f".stale-kokoro-{os.getpid()}"
                os.rename(folder, stale)
                shutil.rmtree(stale, ignore_errors=True)
                os.rename(tmp / "kokoro", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# -- voice isolation (worker/engine/models/separation.py) ---------------------------------------------------

TINY_ISOLATION_SEED = 19
TINY_ISOLATION_VERSION = "1"


def isolation_test_signal(samples: int, sample_rate: int = 44100) -> torch.Tensor:
    """A stereo test track from a formula (no randomness): a 'voice' with vibrato and syllable-rate
    loudness, a low 'bass' line and a bright chord, different in the two channels. float32 (2, samples)."""
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    voice = torch.sin(2 * math.pi * 220 * t + 3 * torch.sin(2 * math.pi * 5 * t)) * (0.6 + 0.4 * torch.sin(2 * math.pi * 4 * t))
    bass = 0.5 * torch.sin(2 * math.pi * 55 * t)
    chord = 0.2 * (torch.sin(2 * math.pi * 1318.5 * t) + torch.sin(2 * math.pi * 1975.5 * t))
    left = 0.4 * voice + bass + chord
    right = 0.4 * voice + 0.8 * bass - chord
    return torch.stack([left, right]).float()


def write_tiny_isolation(path: Path, seed: int = TINY_ISOLATION_SEED) -> None:
    """The tiny htdemucs (SeparationConfig.tiny()) with seeded weights, as `weights isolation` writes it."""
    from worker.engine.models.separation import HTDemucs, SeparationConfig

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(randomise(HTDemucs(SeparationConfig.tiny()), seed), str(path), metadata={"config": "tiny"})


def ensure_tiny_isolation(cache_dir: Path | None = None) -> Path:
    """`<root>/htdemucs/htdemucs.safetensors`, the tiny isolation weights, written once, atomically."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path = root / "htdemucs" / "htdemucs.safetensors"
    stamp = path.with_suffix(".complete")
    if path.is_file() and stamp.is_file() and stamp.read_text() == TINY_ISOLATION_VERSION:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".htdemucs-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        write_tiny_isolation(Path(tmp))
        os.replace(tmp, path)
        stamp.write_text(TINY_ISOLATION_VERSION)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
