"""client/ui_extras.py: the form's issue-19 fields become the job's parameters and media, through the same
functions the page calls; the whole job then passes the contract."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from client.payload import MediaSpec, build_job_input
from client.ui import collect_params
from client.ui_extras import ASPECT_DEFAULT, extra_media, extra_params, scene_lines
from contract.choices import ASPECTS
from contract.job import parse_job_input
from tests.client.conftest import MEDIA


def test_empty_fields_leave_every_default():
    assert extra_params(aspect=ASPECT_DEFAULT, width="", height=" ", scenes="\n", silence_handling=None,
                        trim_trailing_silence=False, audio_isolation=False, audio_mux="voice") == {}
    assert extra_media(mask_polygon="  ") == {"mask": None, "masks": {}, "loras": []}


def test_every_field_reaches_the_job(tmp_path: Path):
    lora = tmp_path / "mine.safetensors"
    lora.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    params = collect_params(prompt="a studio", preset="turbo")
    params.update(extra_params(
        aspect="4:5", scenes="6 = a beach\n2.5=a street\n", silence_handling=True, silence_threshold_db="-50",
        silence_min_s="0.4", silence_audio_guide_scale="1.2", trim_trailing_silence=True, audio_isolation=True,
        audio_mux="voice"))
    extras = extra_media(mask_file=str(MEDIA / "portrait.png"), loras="style:0.7\nhttps://e.com/x.safetensors",
                         lora_files=[str(lora)], lora_scale="0.5")
    job, reports = build_job_input(MediaSpec(image=MEDIA / "portrait.png", audio1=MEDIA / "speech_person1.wav",
                                             **extras), params)
    assert job["aspect"] == "4:5"
    assert job["prompts"] == [{"from_s": 2.5, "text": "a street"}, {"from_s": 6.0, "text": "a beach"}]
    assert (job["silence_handling"], job["silence_threshold_db"], job["silence_min_s"],
            job["silence_audio_guide_scale"]) == (True, -50.0, 0.4, 1.2)
    assert job["trim_trailing_silence"] is True and job["audio_isolation"] is True and job["audio_mux"] == "voice"
    assert job["mask"].startswith("data:image/png;base64,")
    assert base64.b64decode(job["loras"][0]["ref"].split(",", 1)[1]) == lora.read_bytes()
    assert job["loras"][0]["scale"] == 0.5
    assert job["loras"][1:] == [{"ref": "style", "scale": 0.7}, {"ref": "https://e.com/x.safetensors"}]
    assert {r.field for r in reports} >= {"mask", "loras.0.ref"}
    parse_job_input(job)


def test_video_and_two_speaker_fields():
    dub = extra_params(dub_strength="0.6", width="512", height="288")
    assert dub == {"dub_strength": 0.6, "width": 512, "height": 288}
    two = extra_media(mask1=str(MEDIA / "two_people.png"), mask2=None, mask_polygon="[[0,0],[10,0],[10,10]]")
    assert two["masks"] == {"person1": str(MEDIA / "two_people.png")} and two["mask"] == [[0, 0], [10, 0], [10, 10]]


@pytest.mark.parametrize("call, words", [
    (lambda: extra_params(scenes="a beach"), "Scene prompts, line 1"),
    (lambda: extra_params(width="wide"), "not a number"),
    (lambda: extra_media(mask_polygon="[[0, 0"), "Mask polygon"),
    (lambda: extra_media(mask_file=str(MEDIA / "portrait.png"), mask_polygon="[[0,0],[1,0],[1,1]]"), "not both"),
])
def test_bad_form_values_say_which_field(call, words):
    with pytest.raises(ValueError, match=words):
        call()


@given(st.lists(st.tuples(st.integers(0, 3600), st.text("abc xyz", min_size=1, max_size=12).map(str.strip)
                          .filter(bool)), min_size=1, max_size=6, unique_by=lambda t: t[0]))
def test_scene_lines_in_any_order_are_sent_in_order(scenes):
    text = "\n".join(f"{s} = {t}" for s, t in reversed(scenes))
    got = scene_lines(text)
    assert got == [{"from_s": float(s), "text": t} for s, t in sorted(scenes)]


@pytest.mark.parametrize("aspect", ASPECTS)
def test_each_aspect_is_sent_as_chosen(aspect):
    assert extra_params(aspect=aspect) == {"aspect": aspect}
