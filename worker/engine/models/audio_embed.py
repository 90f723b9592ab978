"""wav2vec2 audio features for InfiniteTalk (chinese-wav2vec2-base: 12 layers x 768).

InfiniteTalk does not use wav2vec2's own 50 Hz frame rate. The conv feature encoder's output is
resampled along time (linear, align_corners=True) to exactly one frame per 25 fps video frame,
``seq_len = int(n_samples / 16000 * 25)``, *before* the feature projection and the transformer, so
every transformer layer already runs at video rate. The DiT then consumes hidden states 1..L
(the transformer layer outputs, not the pre-transformer state 0) as ``[seq_len, L, hidden]``.

The encoder is our own torch module with transformers' tensor names (worker/engine/models/wav2vec2.py): importing
transformers cost more of a cold start than loading every weight file (bench/README.md section 17).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worker.engine.audio_io import MIN_SAMPLES, SAMPLE_RATE, VIDEO_FPS, video_frames_for
from worker.engine.errors import AudioDecodeError, WeightLoadError

from worker.engine.models.wav2vec2 import (
    POS_CONV,
    WEIGHT_NORM_G,
    WEIGHT_NORM_V,
    Wav2Vec2Config,
    Wav2Vec2ConfigError,
    Wav2Vec2Encoder,
    WaveformNormalizer,
    fold_weight_norm,
)

# Checkpoint-only halves of the positional convolution's weight (folded into POS_CONV + "weight" at load).
_FOLDED = (POS_CONV + "weight_g", POS_CONV + "weight_v")


@dataclass(frozen=True)
class Wav2Vec2Intermediates:
    """Every stage of one embedding run, batch dimension kept where the model has one (for tests/debugging)."""

    input_values: torch.Tensor  # [n] normalised waveform
    conv_features: torch.Tensor  # [1, C, T_conv] conv feature encoder output
    interp_features: torch.Tensor  # [1, seq_len, C] after resampling to video rate
    projected: torch.Tensor  # [1, seq_len, hidden] feature projection output
    hidden_states: torch.Tensor  # [L + 1, seq_len, hidden]; 0 is the transformer input


def _weight_files(folder: Path) -> list[Path]:
    st = sorted(folder.glob("*.safetensors"))
    if st:
        return st
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise WeightLoadError(str(folder), None, "no model.safetensors or pytorch_model.bin in the wav2vec2 folder")


def _read_state_dict(files: list[Path]) -> dict[str, tuple[Path, torch.Tensor]]:
    out: dict[str, tuple[Path, torch.Tensor]] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(f), device="cpu")
            else:
                sd = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightLoadError(str(f), None, f"unreadable checkpoint: {exc}") from exc
        if not isinstance(sd, dict):
            raise WeightLoadError(str(f), None, "checkpoint does not hold a flat state dict")
        for k, v in sd.items():
            if not isinstance(v, torch.Tensor):
                raise WeightLoadError(str(f), k, "value is not a tensor")
            out[k] = (f, v)
    return out


def _canonical_key(key: str, expected: set[str], prefix: str) -> str | None:
    """Map a checkpoint key onto the module's key space, or None when the module has no such tensor.

    The positional convolution's weight-norm halves map to ``<conv>.weight_g`` / ``<conv>.weight_v`` whatever
    spelling the checkpoint used; the loader folds them into ``<conv>.weight``.
    """
    if key.startswith(prefix + "."):
        key = key[len(prefix) + 1 :]
    if key in expected:
        return key
    for names, short in ((WEIGHT_NORM_G, "weight_g"), (WEIGHT_NORM_V, "weight_v")):
        for name in names:
            if key == POS_CONV + name:
                return POS_CONV + short
    return None


class Wav2Vec2Embedder:
    """Turns a prepared 16 kHz waveform into InfiniteTalk's per-video-frame audio embedding."""

    def __init__(self, model: Wav2Vec2Encoder, feature_extractor: WaveformNormalizer,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor
        self.device = torch.device(device)
        self.dtype = dtype

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Wav2Vec2Embedder:
        """Load a ``save_pretrained``-style folder (config.json, weights, optional preprocessor_config.json).

        Both weight-norm key styles of the positional convolution are accepted, as are checkpoints
        saved from the pre-training model (``wav2vec2.`` prefix, quantizer heads). Missing or
        mis-shaped tensors raise WeightLoadError naming the file and key.
        """
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise WeightLoadError(str(cfg_path), None, "wav2vec2 config.json not found")
        try:
            config = Wav2Vec2Config.from_json_file(cfg_path)
        except Wav2Vec2ConfigError as exc:
            raise WeightLoadError(str(cfg_path), None, f"invalid wav2vec2 config: {exc}") from exc
        try:
            normalizer = WaveformNormalizer.from_folder(folder, SAMPLE_RATE)
        except Wav2Vec2ConfigError as exc:
            raise WeightLoadError(str(folder / "preprocessor_config.json"), None, str(exc)) from exc
        # Built on meta (no random initialisation) and given the loaded tensors themselves (assign=True): no
        # to_empty (whose meta empty_like imports sympy through torch.fx, 2-3 s of a cold start) and no copy.
        with torch.device("meta"):
            model = Wav2Vec2Encoder(config)

        expected = dict(model.state_dict())
        conv_weight = expected.pop(POS_CONV + "weight")
        expected_keys = set(expected) | set(_FOLDED)
        loaded: dict[str, torch.Tensor] = {}
        for key, (file, tensor) in _read_state_dict(_weight_files(folder)).items():
            target = _canonical_key(key, expected_keys, "wav2vec2")
            if target is None:
                # Pre-training heads (quantizer, project_q/hid), spec-augment's masked_spec_embed and heads of
                # fine-tuned variants are not part of the encoder; a wrong folder still shows up as missing keys.
                continue
            if target in _FOLDED:
                if tensor.dim() != 3 or (target.endswith("_v") and tuple(tensor.shape) != tuple(conv_weight.shape)):
                    raise WeightLoadError(str(file), key, f"shape {tuple(tensor.shape)} does not fit the positional "
                                                          f"convolution {tuple(conv_weight.shape)}")
            elif tuple(tensor.shape) != tuple(expected[target].shape):
                raise WeightLoadError(
                    str(file), key, f"shape {tuple(tensor.shape)} does not match expected {tuple(expected[target].shape)}"
                )
            loaded[target] = tensor
        missing = sorted(expected_keys - set(loaded))
        if missing:
            raise WeightLoadError(str(folder), missing[0], f"missing key ({len(missing)} missing in all)")
        g, v = (loaded.pop(k) for k in _FOLDED)
        if tuple(g.shape) != (1, 1, conv_weight.shape[2]):
            raise WeightLoadError(str(folder), POS_CONV + "weight_g",
                                  f"shape {tuple(g.shape)} does not match expected {(1, 1, conv_weight.shape[2])}")
        loaded[POS_CONV + "weight"] = fold_weight_norm(g.float(), v.float())
        model.load_state_dict(loaded, strict=True, assign=True)
        model.to(device=device, dtype=dtype)
        return cls(model, normalizer, device=device, dtype=dtype)

    def normalize(self, audio_16k: np.ndarray) -> np.ndarray:
        """The feature extractor's per-utterance zero-mean/unit-variance normalisation (float32)."""
        return self.feature_extractor(audio_16k)

    def _forward(self, audio_16k: np.ndarray, seq_len: int | None, keep: bool):
        audio = np.asarray(audio_16k).reshape(-1)
        if audio.shape[0] < MIN_SAMPLES:
            raise AudioDecodeError(
                f"audio too short for an embedding: {audio.shape[0]} samples at {SAMPLE_RATE} Hz, "
                f"need at least {MIN_SAMPLES} (one video frame at {VIDEO_FPS} fps)"
            )
        if seq_len is None:
            seq_len = video_frames_for(audio)
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        normed = self.normalize(audio)
        # no_grad rather than inference_mode: callers may edit the returned tensor in place.
        with torch.no_grad():
            x = torch.from_numpy(normed).to(device=self.device, dtype=self.dtype).unsqueeze(0)
            conv = self.model.feature_extractor(x)  # [1, C, T_conv]
            interp = F.interpolate(conv, size=seq_len, mode="linear", align_corners=True).transpose(1, 2)
            projected = self.model.feature_projection(interp)
            states = self.model.encoder.hidden_states(projected)
            emb = torch.stack(states[1:], dim=1)[0].permute(1, 0, 2).float().cpu().contiguous()
            inter = None
            if keep:
                inter = Wav2Vec2Intermediates(
                    input_values=torch.from_numpy(normed),
                    conv_features=conv.float().cpu(),
                    interp_features=interp.float().cpu(),
                    projected=projected.float().cpu(),
                    hidden_states=torch.cat(states, dim=0).float().cpu(),
                )
        return emb, inter

    def embed(self, audio_16k: np.ndarray, seq_len: int | None = None) -> torch.Tensor:
        """``[seq_len, num_layers, hidden]`` float32 on the CPU; seq_len defaults to the 25 fps frame count."""
        return self._forward(audio_16k, seq_len, keep=False)[0]

    def embed_with_intermediates(
        self, audio_16k: np.ndarray, seq_len: int | None = None
    ) -> tuple[torch.Tensor, Wav2Vec2Intermediates]:
        emb, inter = self._forward(audio_16k, seq_len, keep=True)
        assert inter is not None
        return emb, inter
