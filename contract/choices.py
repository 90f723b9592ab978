"""The job contract's named choices and media constants, each defined once.

Sampler presets and storage targets are the file stems of `conf/sampler/*.yaml` and
`conf/storage/*.yaml`, so a new preset or target is a new yaml file, not a code change. This
module reads file names only (no Hydra), so the client and infra can import it with pydantic
alone. `conf/` is found as the worker finds it: `$INFINITETALK_CONF_DIR`, else the repository's
`conf/` beside this package.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CONF_DIR_ENV_VAR",
    "conf_dir",
    "group_options",
    "VIDEO_FPS",
    "AUDIO_SAMPLE_RATE",
    "SIZES",
    "SIZE_RANK",
    "DEFAULT_SIZE",
    "ASPECTS",
    "SIZE_PIXELS",
    "MAX_SCENE_PROMPTS",
    "MAX_LORAS",
    "LORA_SCALE_LIMIT",
    "MODES",
    "SAMPLER_PRESETS",
    "OUTPUT_TARGETS",
    "AUDIO_MUX_CHOICES",
    "VOICE_NAME_PATTERN",
    "MAX_AUDIO_DECODED_BYTES",
]

CONF_DIR_ENV_VAR = "INFINITETALK_CONF_DIR"

# The model's frame rate and the audio encoder's input rate (model facts: Wan2.1 at 25 fps, wav2vec2 at 16 kHz).
VIDEO_FPS = 25
AUDIO_SAMPLE_RATE = 16000

# Output buckets by their short side; a GPU tier caps the size it may render.
SIZE_RANK = {"infinitetalk-480": 480, "infinitetalk-720": 720}
SIZES = tuple(SIZE_RANK)
DEFAULT_SIZE = "infinitetalk-480"
# A tier's pixel budget for free framing (aspect, width/height): its square bucket's pixel count.
SIZE_PIXELS = {"infinitetalk-480": 640 * 640, "infinitetalk-720": 960 * 960}
# The framings the model renders, as height/width: the extremes of its own bucket tables (infinitetalk-720's
# 448x2048, infinitetalk-480's 1280x320). A frame past them (2048x16) encodes, but the model never saw such a shape.
MIN_FRAME_RATIO = 448 / 2048
MAX_FRAME_RATIO = 1280 / 320
# Framing presets, width:height.
ASPECTS = ("16:9", "9:16", "1:1", "4:5")
# Per-scene prompts a job may give (each is one T5 encoding per job).
MAX_SCENE_PROMPTS = 32
# User LoRAs a job may add (each is one merge and one unmerge of the DiT), and the bound of their scale:
# |scale| <= 2 covers every strength published LoRAs recommend (0.3 to 1.5) and negative use, while larger
# factors only push the weights far outside what the model was trained on.
MAX_LORAS = 4
LORA_SCALE_LIMIT = 2.0
MODES = ("clip", "streaming")
# trim_trailing_silence keeps this much of the silence after the last speech (seconds): the face settles and
# the last syllable's release is not clipped.
TRIM_TAIL_S = 0.2
# The MP4's soundtrack with audio_isolation: the uploaded mix as sent, or the isolated voice.
AUDIO_MUX_CHOICES = ("original", "voice")
# A Kokoro voice pack name (a file stem under the TTS folder's voices/, never a path): the contract refuses
# others at once, and the engine checks again before it opens the file.
VOICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
# float32 bytes (all channels) one audio file may decode to: the media guard refuses larger declarations from
# the header, and the decoders stop there whatever the header said. 30 min of 48 kHz stereo speech is 0.7 GB;
# a few MB of FLAC silence can declare 8 channels at 384 kHz for half an hour, 20 GB once decoded.
MAX_AUDIO_DECODED_BYTES = 2 * 1024**3


def conf_dir() -> Path:
    """The configuration tree's root (the same rule as configuration's default_conf_dir)."""
    env = os.environ.get(CONF_DIR_ENV_VAR)
    if env:
        return Path(env).resolve()
    return (Path(__file__).resolve().parents[1] / "conf").resolve()


def group_options(group: str, root: Path | None = None) -> tuple[str, ...]:
    """A config group's options: its yaml file stems, sorted; files starting with `_` or `base_` are not options."""
    folder = (root or conf_dir()) / group
    stems = (p.stem for p in folder.glob("*.yaml") if not p.name.startswith(("_", "base_")))
    return tuple(sorted(stems))


SAMPLER_PRESETS = group_options("sampler")
OUTPUT_TARGETS = group_options("storage")
if not SAMPLER_PRESETS or not OUTPUT_TARGETS:
    raise ImportError(f"no conf/sampler or conf/storage options under {conf_dir()}; set {CONF_DIR_ENV_VAR}")
