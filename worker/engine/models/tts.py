"""Text to speech with Kokoro-82M, read from a local weights folder only.

The folder holds what the published model repo holds: `config.json` (architecture + phoneme
vocabulary), one `.pth` checkpoint (a dict of per-component state dicts: bert, bert_encoder,
predictor, text_encoder, decoder; keys may carry a `module.` prefix from multi-GPU training) and
`voices/<name>.pt` style packs ([510, 1, 2 * style_dim], one style row per phoneme count).

The network is the `kokoro` package's `KModel`. Its own loader falls back to a non-strict load
when keys do not match, which could leave random weights in place without a word; so the model is
built empty and the checkpoint is loaded here, strictly, with errors naming the file and key.
Nothing is fetched from the network: text becomes phonemes through espeak-ng (misaki's espeak
front end, which maps espeak's IPA onto Kokoro's symbol set), never through spaCy models.

Kokoro speaks at 24 kHz; `synthesize_16k` gives the 16 kHz float32 track the video model uses.
"""
from __future__ import annotations

import io
import json
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.choices import VOICE_NAME_PATTERN
from worker.engine.errors import TtsInputError, WeightLoadError

__all__ = [
    "TTS_SAMPLE_RATE",
    "KOKORO_COMPONENTS",
    "KOKORO_CONFIG",
    "KOKORO_MODEL_FILE",
    "VOICES_DIR",
    "KokoroTTS",
    "Speech",
    "split_dialogue",
    "voice_language",
]

TTS_SAMPLE_RATE = 24000
KOKORO_CONFIG = "config.json"
KOKORO_MODEL_FILE = "kokoro-v1_0.pth"  # the published name; any single .pth in the folder is accepted
VOICES_DIR = "voices"
KOKORO_COMPONENTS = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
KOKORO_REPO_ID = "hexgrad/Kokoro-82M"  # only a label for KModel; nothing is downloaded

_VOICE_NAME = re.compile(VOICE_NAME_PATTERN)
_SPEAKER_MARK = re.compile(r"\(s([12])\)", re.I)  # as contract.job.TtsSpec counts speakers
_SENTENCE_END = re.compile(r"(?<=[.!?;:…])\s+")

# Voice names start with a letter for the language they were trained on; these are the ones
# espeak-ng can phonemize. (j/z voices were trained on dedicated Japanese/Chinese front ends.)
_ESPEAK_LANGUAGE = {
    "a": "en-us",
    "b": "en-gb",
    "e": "es",
    "f": "fr-fr",
    "h": "hi",
    "i": "it",
    "p": "pt-br",
}


def voice_language(voice: str) -> str:
    """The espeak-ng language for a voice pack name (`af_heart` -> en-us)."""
    lang = _ESPEAK_LANGUAGE.get(voice[:1].lower())
    if lang is None:
        raise TtsInputError(
            f"voice {voice!r}: its language has no espeak-ng phonemizer on this worker",
            hint="use a voice whose name starts with " + ", ".join(sorted(_ESPEAK_LANGUAGE)) + " (e.g. af_heart)",
        )
    return lang


def split_dialogue(text: str) -> list[tuple[int, str]]:
    """[(speaker, text)] turns from a text with (s1)/(s2) markers, in order.

    Text before the first marker belongs to speaker 1; consecutive turns of one speaker are joined
    and turns with nothing but whitespace are dropped.
    """
    turns: list[tuple[int, str]] = []
    speaker, pos = 1, 0
    pieces: list[tuple[int, str]] = []
    for m in _SPEAKER_MARK.finditer(text):
        pieces.append((speaker, text[pos : m.start()]))
        speaker, pos = int(m.group(1)), m.end()
    pieces.append((speaker, text[pos:]))
    for who, part in pieces:
        part = " ".join(part.split())
        if not part:
            continue
        if turns and turns[-1][0] == who:
            turns[-1] = (who, f"{turns[-1][1]} {part}")
        else:
            turns.append((who, part))
    return turns


def _empty_checkpoint() -> io.BytesIO:
    buf = io.BytesIO()
    torch.save({}, buf)
    buf.seek(0)
    return buf


def build_kmodel(config: dict[str, Any]) -> torch.nn.Module:
    """The `KModel` network for `config`, with its initial (untrained) weights."""
    try:
        from kokoro.model import KModel
    except ImportError as exc:  # pragma: no cover - kokoro is an engine dependency
        raise WeightLoadError("kokoro", None, f"the kokoro package is not installed ({exc})") from exc
    with warnings.catch_warnings():
        # Deprecation of the old weight_norm API and single-layer LSTM dropout: both are the
        # published architecture's choices, not ours to act on.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.nn\.utils")
        warnings.filterwarnings("ignore", message=r"dropout option adds dropout", category=UserWarning)
        return KModel(repo_id=KOKORO_REPO_ID, config=config, model=_empty_checkpoint())


def _find_model_file(folder: Path) -> Path:
    preferred = folder / KOKORO_MODEL_FILE
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*.pth"))
    if len(found) != 1:
        what = "no .pth checkpoint" if not found else f"{len(found)} .pth files ({', '.join(p.name for p in found)})"
        raise WeightLoadError(str(folder), None, f"expected one Kokoro checkpoint ({KOKORO_MODEL_FILE}), found {what}")
    return found[0]


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def load_checkpoint_strict(model: torch.nn.Module, path: Path) -> None:
    """Every component, every key, every shape, or a WeightLoadError that says which."""
    try:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable, truncated or unsafe pickle
        raise WeightLoadError(str(path), None, f"cannot read the checkpoint: {exc}") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise WeightLoadError(str(path), None, "not a Kokoro checkpoint (expected a dict of component state dicts)")
    missing = [c for c in KOKORO_COMPONENTS if c not in raw]
    if missing:
        raise WeightLoadError(str(path), missing[0], "component missing from the checkpoint")
    for comp in KOKORO_COMPONENTS:
        module: torch.nn.Module = getattr(model, comp)
        sd = _strip_prefix(raw[comp])
        want = module.state_dict()
        # Older transformers saved ALBERT's position_ids buffer; it is derived, not learned.
        sd = {k: v for k, v in sd.items() if k in want or not k.endswith("position_ids")}
        for key, ref in want.items():
            if key not in sd:
                raise WeightLoadError(str(path), f"{comp}.{key}", "missing")
            if tuple(sd[key].shape) != tuple(ref.shape):
                raise WeightLoadError(
                    str(path), f"{comp}.{key}", f"shape {tuple(sd[key].shape)}, the config needs {tuple(ref.shape)}"
                )
        extra = sorted(set(sd) - set(want))
        if extra:
            raise WeightLoadError(str(path), f"{comp}.{extra[0]}", "not part of the model this config describes")
        module.load_state_dict(sd, strict=True)


@dataclass(frozen=True)
class _Chunk:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Speech:
    """Speech for one text: the samples spoken, and the phoneme tokens spoken and left unspoken (budget reached)."""

    wave: np.ndarray
    tokens_spoken: int
    tokens_left: int


class KokoroTTS:
    """A loaded Kokoro model plus its voice packs; `synthesize` is safe to call from one thread at a time."""

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], voices_dir: Path, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.vocab: dict[str, int] = dict(config["vocab"])
        self.voices_dir = voices_dir
        self.device = device
        self.style_dim = int(config["style_dim"])
        # Two positions go to the boundary (pad) tokens around every chunk.
        self.max_tokens = int(config["plbert"]["max_position_embeddings"]) - 2
        self._voices: dict[str, torch.Tensor] = {}
        self._g2p: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- loading ----------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu") -> "KokoroTTS":
        root = Path(folder)
        cfg_path = root / KOKORO_CONFIG
        if not cfg_path.is_file():
            raise WeightLoadError(str(cfg_path), None, "file not found (is the Kokoro-82M folder on the volume?)")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightLoadError(str(cfg_path), None, f"unreadable config: {exc}") from exc
        for key in ("vocab", "plbert", "istftnet", "style_dim", "hidden_dim", "n_token"):
            if key not in config:
                raise WeightLoadError(str(cfg_path), key, "missing from the Kokoro config")
        model_path = _find_model_file(root)
        try:
            model = build_kmodel(config)
        except WeightLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - a config the architecture cannot be built from
            raise WeightLoadError(str(cfg_path), None, f"cannot build the model from this config: {exc}") from exc
        load_checkpoint_strict(model, model_path)
        dev = torch.device(device)
        model = model.to(dev).eval()
        voices = root / VOICES_DIR
        if not voices.is_dir():
            raise WeightLoadError(str(voices), None, "voice pack folder not found")
        return cls(model, config, voices, dev)

    def voices(self) -> list[str]:
        return sorted(p.stem for p in self.voices_dir.glob("*.pt"))

    def voice_pack(self, voice: str) -> torch.Tensor:
        if not isinstance(voice, str) or not _VOICE_NAME.match(voice):
            raise TtsInputError(f"invalid voice name {voice!r}", hint="voice names look like af_heart")
        with self._lock:
            pack = self._voices.get(voice)
            if pack is not None:
                return pack
            path = self.voices_dir / f"{voice}.pt"
            if not path.is_file():
                have = self.voices()
                raise TtsInputError(
                    f"unknown voice {voice!r}",
                    hint="available voices: " + (", ".join(have[:40]) + (" …" if len(have) > 40 else "") if have else "none"),
                )
            try:
                pack = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001
                raise WeightLoadError(str(path), None, f"cannot read the voice pack: {exc}") from exc
            if not isinstance(pack, torch.Tensor) or pack.ndim != 3 or pack.shape[-1] != 2 * self.style_dim:
                shape = tuple(pack.shape) if isinstance(pack, torch.Tensor) else type(pack).__name__
                raise WeightLoadError(str(path), None, f"voice pack shape {shape}, expected [N, 1, {2 * self.style_dim}]")
            pack = pack.float()
            self._voices[voice] = pack
            return pack

    # -- text -> tokens -----------------------------------------------------------------

    def _phonemizer(self, lang: str):
        with self._lock:
            g2p = self._g2p.get(lang)
            if g2p is None:
                from misaki.espeak import EspeakG2P

                g2p = self._g2p[lang] = EspeakG2P(language=lang)
            return g2p

    def phonemize(self, text: str, lang: str = "en-us") -> str:
        """Kokoro phoneme symbols for `text`; symbols outside the model's vocabulary are dropped."""
        phonemes, _ = self._phonemizer(lang)(text)
        kept = "".join(ch for ch in (phonemes or "") if ch in self.vocab)
        return " ".join(kept.split())

    def chunks(self, text: str, voice: str) -> list[_Chunk]:
        """Token chunks of at most `max_tokens`, cut at sentence ends, else at word gaps."""
        lang = voice_language(voice)
        pieces: list[str] = []
        for sentence in _SENTENCE_END.split(" ".join(text.split())):
            ps = self.phonemize(sentence, lang) if sentence.strip() else ""
            while len(ps) > self.max_tokens:
                cut = ps.rfind(" ", 0, self.max_tokens + 1)
                cut = cut if cut > 0 else self.max_tokens
                pieces.append(ps[:cut].strip())
                ps = ps[cut:].strip()
            if ps:
                pieces.append(ps)
        packed: list[str] = []
        for ps in pieces:
            if packed and len(packed[-1]) + 1 + len(ps) <= self.max_tokens:
                packed[-1] = f"{packed[-1]} {ps}"
            else:
                packed.append(ps)
        out = [_Chunk(tuple(self.vocab[ch] for ch in ps)) for ps in packed if ps]
        if not any(ch.isalpha() for ps in packed for ch in ps):  # punctuation alone is silence
            raise TtsInputError(
                "the tts text has nothing to pronounce", hint="give words in the voice's language, not only symbols"
            )
        return out

    # -- synthesis ----------------------------------------------------------------------

    @torch.inference_mode()
    def speak(self, text: str, voice: str, speed: float = 1.0, seed: int = 0, max_s: float | None = None) -> Speech:
        """float32 mono speech at 24 kHz, chunk by chunk until `max_s` seconds are spoken (None: all of it).

        The whole text is phonemised and checked either way (the same errors with or without a budget); only the
        vocoder, the costly part, stops early, and the chunks it skipped are counted so the caller can report the
        cut. The vocoder draws noise; `seed` makes it repeatable without touching the global RNG, and the chunks it
        does speak are the same as in a full run."""
        if not text or not text.strip():
            raise TtsInputError("the tts text is empty", hint="put the words to speak in tts.text")
        pack = self.voice_pack(voice)
        chunks = self.chunks(text, voice)
        parts: list[np.ndarray] = []
        spoken = spoken_samples = 0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type if devices else "cuda"):
            torch.manual_seed(seed)
            for chunk in chunks:
                if max_s is not None and spoken_samples >= max_s * TTS_SAMPLE_RATE:
                    break
                n = len(chunk.ids)
                style = pack[min(n, pack.shape[0]) - 1].reshape(1, -1).to(self.device)
                ids = torch.tensor([[0, *chunk.ids, 0]], dtype=torch.long, device=self.device)
                audio, _ = self.model.forward_with_tokens(ids, style, speed)
                parts.append(audio.reshape(-1).float().cpu().numpy())
                spoken += n
                spoken_samples += parts[-1].size
        wave = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)
        if not np.all(np.isfinite(wave)):
            raise WeightLoadError("kokoro", None, "the voice model produced non-finite samples")
        return Speech(wave, spoken, sum(len(c.ids) for c in chunks) - spoken)

    def synthesize(self, text: str, voice: str, speed: float = 1.0, seed: int = 0) -> np.ndarray:
        """All of `text` as float32 mono speech at 24 kHz."""
        return self.speak(text, voice, speed=speed, seed=seed).wave

    def speak_16k(self, text: str, voice: str, speed: float = 1.0, seed: int = 0, max_s: float | None = None) -> Speech:
        """`speak` resampled to the video model's 16 kHz (soxr HQ, as uploaded audio)."""
        from worker.engine.audio_io import resample_to_16k

        said = self.speak(text, voice, speed=speed, seed=seed, max_s=max_s)
        wave = resample_to_16k(said.wave, TTS_SAMPLE_RATE) if said.wave.size else said.wave
        return Speech(wave, said.tokens_spoken, said.tokens_left)

    def synthesize_16k(self, text: str, voice: str, speed: float = 1.0, seed: int = 0) -> np.ndarray:
        """All of `text` as speech at 16 kHz."""
        return self.speak_16k(text, voice, speed=speed, seed=seed).wave
