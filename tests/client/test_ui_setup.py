"""client/ui_setup.py: the setup selector's visibility rules, the voice list, the bundled examples."""
from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from client.ui_setup import DEFAULT_VOICES, KOKORO_VOICES, SETUPS, load_examples, setup_for, visible_inputs
from tests.client.conftest import REPO_ROOT


@given(st.sampled_from(SETUPS))
def test_only_the_inputs_that_apply_show(s) -> None:
    v = visible_inputs(s.label)
    assert v["image"] == (s.source == "image") and v["video"] == (s.source == "video")
    assert v["audio1"] == (s.speech == "audio") and v["tts_text"] == (s.speech == "tts")
    assert v["audio2"] == v["audio_type"] == (s.speech == "audio" and s.speakers == 2)
    assert v["voice2"] == (s.speech == "tts" and s.speakers == 2)
    assert v["boxes"] == v["speaker_masks"] == (s.source == "image" and s.speakers == 2)
    assert v["dub_strength"] == (s.source == "video") and v["isolation"] == (s.speech == "audio")
    assert not (v["audio1"] and v["tts_text"])


def test_an_unknown_label_falls_back_to_the_first_setup() -> None:
    assert setup_for("nonsense") == SETUPS[0] and setup_for(None) == SETUPS[0]


def test_voice_list_covers_the_workers_voices_and_languages() -> None:
    from testkit.tiny import TINY_VOICES
    from worker.engine.models.tts import _ESPEAK_LANGUAGE
    from worker.media.audio import DEFAULT_VOICES as WORKER_DEFAULTS

    assert set(TINY_VOICES) <= set(KOKORO_VOICES) and tuple(WORKER_DEFAULTS) == DEFAULT_VOICES
    assert len(set(KOKORO_VOICES)) == len(KOKORO_VOICES)
    assert {v[0] for v in KOKORO_VOICES} <= set(_ESPEAK_LANGUAGE), "a listed voice the worker cannot phonemize"


def test_every_bundled_example_becomes_a_preset() -> None:
    files = sorted((REPO_ROOT / "examples").glob("*.json"))
    examples = {e.name: e for e in load_examples()}
    assert len(examples) == len(files)
    for f in files:
        inp = json.loads(f.read_text())["input"]
        ex = examples[f.stem.replace("_", " ")]
        s = setup_for(ex.setup)
        assert s.label == ex.setup
        assert (s.source == "video") == ("video" in inp)
        assert (s.speech == "tts") == ("tts" in inp)
        assert (s.speakers == 2) == isinstance(inp.get("audio"), dict)
        assert ex.seed == inp.get("seed") and ex.prompt == inp.get("prompt")
    assert examples["two speakers add"].bbox2 == "224 0 448 280"
