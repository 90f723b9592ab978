"""The UI's one setup selector (reference x speakers x speech), its voices and the bundled examples.

One choice decides which inputs apply, so the page shows only those: a single speaker never sees
person 2's audio or add/para, a TTS job never sees audio uploads, a dubbing job sees a video
instead of an image. Kept free of gradio so the rules are tested in the worker's environment too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Setup", "SETUPS", "setup_for", "visible_inputs", "KOKORO_VOICES", "Example", "load_examples",
           "EXAMPLES_DIR"]

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


@dataclass(frozen=True)
class Setup:
    label: str
    source: str  # "image" | "video"
    speakers: int  # 1 | 2
    speech: str  # "audio" | "tts"


SETUPS: tuple[Setup, ...] = (
    Setup("Image · one speaker · audio file", "image", 1, "audio"),
    Setup("Image · two speakers · audio files", "image", 2, "audio"),
    Setup("Image · one speaker · text to speech", "image", 1, "tts"),
    Setup("Image · two speakers · text to speech", "image", 2, "tts"),
    Setup("Video dubbing · audio file", "video", 1, "audio"),
    Setup("Video dubbing · text to speech", "video", 1, "tts"),
)


def setup_for(label: str | None) -> Setup:
    return next((s for s in SETUPS if s.label == label), SETUPS[0])


# Component keys the selector governs; build_app maps them to gradio components.
GOVERNED = ("image", "video", "audio1", "audio2", "audio_type", "tts_text", "voice1", "voice2", "boxes",
            "speaker_masks", "dub_strength", "isolation")


def visible_inputs(label: str | None) -> dict[str, bool]:
    """Which governed inputs apply to this setup: per-speaker masks where boxes apply, dubbing strength with a
    video, voice isolation with uploaded audio (TTS speech has no music to remove)."""
    s = setup_for(label)
    audio, tts, two = s.speech == "audio", s.speech == "tts", s.speakers == 2
    return {"image": s.source == "image", "video": s.source == "video", "audio1": audio, "audio2": audio and two,
            "audio_type": audio and two, "tts_text": tts, "voice1": tts, "voice2": tts and two,
            "boxes": s.source == "image" and two, "speaker_masks": s.source == "image" and two,
            "dub_strength": s.source == "video", "isolation": audio}


# Kokoro-82M voice packs (the model's published names), grouped by the language letter the worker's
# phonemizer table (worker.engine.models.tts) maps to espeak-ng. The tiny test model carries af_heart and
# am_michael only, which are also the worker's defaults for speakers 1 and 2 (worker.media.audio.DEFAULT_VOICES).
KOKORO_VOICES: tuple[str, ...] = (
    "af_heart", "af_alloy", "af_aoede", "af_bella", "af_jessica", "af_kore", "af_nicole", "af_nova", "af_river",
    "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_onyx",
    "am_puck", "am_santa", "bf_alice", "bf_emma", "bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_george",
    "bm_lewis", "ef_dora", "em_alex", "em_santa", "ff_siwis", "hf_alpha", "hf_beta", "hm_omega", "hm_psi",
    "if_sara", "im_nicola", "pf_dora", "pm_alex", "pm_santa",
)
DEFAULT_VOICES = ("af_heart", "am_michael")


@dataclass(frozen=True)
class Example:
    """One bundled example as form values (paths absolute)."""

    name: str
    setup: str
    image: str | None = None
    video: str | None = None
    audio1: str | None = None
    audio2: str | None = None
    audio_type: str | None = None
    tts_text: str = ""
    voice1: str | None = None
    prompt: str = ""
    mode: str | None = None
    preset: str | None = None
    seed: int | None = None
    bbox1: str = ""
    bbox2: str = ""


def _example(path: Path) -> Example:
    inp: dict[str, Any] = json.loads(path.read_text())["input"]
    base = path.parent

    def file(v: Any) -> str | None:
        return str((base / v).resolve()) if isinstance(v, str) else None

    audio = inp.get("audio")
    a1, a2 = (file(audio.get("person1")), file(audio.get("person2"))) if isinstance(audio, dict) else (file(audio), None)
    tts = inp.get("tts") or {}
    source = "video" if inp.get("video") else "image"
    speakers = 2 if a2 or "(s2)" in str(tts.get("text", "")).lower() else 1
    speech = "tts" if tts else "audio"
    label = next(s.label for s in SETUPS if (s.source, s.speech) == (source, speech)
                 and (s.speakers == speakers or s.source == "video"))
    boxes = inp.get("bbox") or {}
    return Example(name=path.stem.replace("_", " "), setup=label, image=file(inp.get("image")),
                   video=file(inp.get("video")), audio1=a1, audio2=a2, audio_type=inp.get("audio_type"),
                   tts_text=str(tts.get("text", "")), voice1=tts.get("voice"), prompt=inp.get("prompt", ""),
                   mode=inp.get("mode"), preset=inp.get("sampler"), seed=inp.get("seed"),
                   bbox1=" ".join(f"{v:g}" for v in boxes.get("person1", [])),
                   bbox2=" ".join(f"{v:g}" for v in boxes.get("person2", [])))


def load_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    """The examples/*.json whose media exist (an installed package may lack them)."""
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            ex = _example(path)
        except (ValueError, KeyError, StopIteration, AttributeError):
            continue
        if all(Path(f).exists() for f in (ex.image, ex.video, ex.audio1, ex.audio2) if f):
            out.append(ex)
    return out
