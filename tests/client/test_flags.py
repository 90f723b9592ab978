"""client/flags.py and the submit flags of issue 19's fields: each flag lands in the job input it names."""
from __future__ import annotations

import argparse
import base64
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from client.cli import _job_input, build_parser
from client.flags import lora_ref, mask_value, scene_prompt
from contract.job import parse_job_input
from tests.client.conftest import MEDIA

BASE = ["submit", "--base-url", "http://127.0.0.1:9", "--quiet"]
IMAGE_AUDIO = ["--image", str(MEDIA / "portrait.png"), "--audio", str(MEDIA / "speech_person1.wav")]
REFS = st.sampled_from(["style.safetensors", "/runpod-volume/loras/a.safetensors", "https://e.com/l/x.safetensors",
                        "s3://bucket/loras/b.safetensors", "https://e.com:8443/v1.2/y.safetensors", "my:odd:name"])


def job_of(*flags: str) -> dict:
    return _job_input(build_parser().parse_args([*BASE, *flags]))


@given(REFS, st.floats(-2, 2, allow_nan=False))
def test_a_lora_flag_is_its_ref_and_scale(ref, scale):
    assert lora_ref(f"{ref}:{scale!r}") == (ref, scale)
    assert lora_ref(ref) == (ref, None)  # no number after the last colon: all of it is the ref


@given(st.floats(0, 86_400, allow_nan=False), st.text(min_size=0, max_size=40).filter(lambda t: t == t.strip()))
def test_a_scene_flag_is_its_start_and_text(start, text):
    assert scene_prompt(f"{start!r}={text}") == {"from_s": start, "text": text}


@pytest.mark.parametrize("bad", ["beach", "x=beach", "=beach", "1,5=beach"])
def test_a_scene_flag_without_a_start_is_a_usage_error(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        scene_prompt(bad)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*BASE, "--prompt-at", bad])


def test_mask_flags_take_a_polygon_or_a_file():
    assert mask_value("[[0, 0], [10, 0], [10, 5]]") == [[0, 0], [10, 0], [10, 5]]
    assert mask_value("m.png") == "m.png"
    with pytest.raises(argparse.ArgumentTypeError):
        mask_value("[[0, 0], [10")


def test_every_issue_19_flag_lands_in_the_job(tmp_path: Path):
    mask = tmp_path / "mask.png"
    mask.write_bytes((MEDIA / "portrait.png").read_bytes())
    lora = tmp_path / "mine.safetensors"
    lora.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    job = job_of(*IMAGE_AUDIO, "--aspect", "9:16", "--prompt", "a studio", "--prompt-at", "8=a beach",
                 "--prompt-at", "3=a street", "--mask", str(mask), "--lora", f"{lora}:0.5", "--lora", "style",
                 "--silence-handling", "true", "--silence-threshold-db", "-50", "--silence-min-s", "0.5",
                 "--silence-audio-guide", "1.5", "--trim-silence", "--isolate-voice", "--audio-mux", "voice")
    assert job["aspect"] == "9:16" and job["prompt"] == "a studio"
    assert job["prompts"] == [{"from_s": 3.0, "text": "a street"}, {"from_s": 8.0, "text": "a beach"}]  # in order
    assert job["mask"].startswith("data:image/png;base64,")  # a local file, sniffed and inlined like --image
    assert base64.b64decode(job["loras"][0]["ref"].split(",", 1)[1]) == lora.read_bytes()
    assert job["loras"][0]["scale"] == 0.5 and job["loras"][1] == {"ref": "style"}  # a name in the LoRA folder
    assert (job["silence_handling"], job["silence_threshold_db"], job["silence_min_s"],
            job["silence_audio_guide_scale"]) == (True, -50.0, 0.5, 1.5)
    assert job["trim_trailing_silence"] is True and job["audio_isolation"] is True and job["audio_mux"] == "voice"
    parse_job_input(job)  # the contract takes it as it is
    sized = job_of(*IMAGE_AUDIO, "--width", "512", "--height", "288", "--mask", "[[0,0],[100,0],[100,80]]")
    assert (sized["width"], sized["height"], sized["mask"]) == (512, 288, [[0, 0], [100, 0], [100, 80]])
    assert "aspect" not in sized and "trim_trailing_silence" not in sized and "loras" not in sized  # unset: left out


def test_video_and_speaker_flags(tmp_path: Path):
    dub = job_of("--video", str(MEDIA / "reference.mp4"), "--audio", str(MEDIA / "speech_person1.wav"),
                 "--dub-strength", "0.6")
    assert dub["dub_strength"] == 0.6 and dub["video"].startswith("data:video/mp4")
    two = job_of("--image", str(MEDIA / "two_people.png"), "--audio", str(MEDIA / "speech_person1.wav"),
                 "--audio2", str(MEDIA / "speech_person2.wav"), "--audio-type", "para",
                 "--mask1", "[[0,0],[50,0],[50,50]]", "--mask2", "https://e.com/right.png")
    assert two["masks"] == {"person1": [[0, 0], [50, 0], [50, 50]], "person2": "https://e.com/right.png"}


def test_a_mask_that_is_not_an_image_is_refused_before_sending(tmp_path: Path, capsys):
    from client.cli import main

    rc = main([*BASE, *IMAGE_AUDIO, "--mask", str(MEDIA / "speech_person1.wav")])
    err = capsys.readouterr().err
    assert rc == 2 and "mask: speech_person1.wav is an audio file" in err, err


def test_a_local_lora_that_is_not_safetensors_is_refused_before_sending(tmp_path: Path, capsys):
    from client.cli import main

    pickle = tmp_path / "style.ckpt"
    pickle.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a torch pickle, not safetensors
    rc = main([*BASE, *IMAGE_AUDIO, "--lora", f"{pickle}:0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "loras.0.ref: style.ckpt is not a safetensors file" in err, err
