"""client/ui_checks.py: uploads judged by their content, with messages a person understands."""
from __future__ import annotations

import string
import wave
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from client.ui_checks import check_upload, sniff_kind
from tests.client.conftest import MEDIA

printable_text = st.text(alphabet=string.ascii_letters + string.digits + " .,;:!?\n", min_size=16, max_size=200)


@given(printable_text)
@settings(max_examples=200, deadline=None)
def test_plain_text_is_never_taken_for_media(text: str) -> None:
    assert sniff_kind(text.encode()) is None


@given(st.binary(min_size=0, max_size=40))
@settings(max_examples=200, deadline=None)
def test_known_magic_wins_whatever_follows(tail: bytes) -> None:
    assert sniff_kind(b"\x89PNG\r\n\x1a\n" + tail) == "image"
    assert sniff_kind(b"\xff\xd8\xff" + tail) == "image"
    assert sniff_kind(b"RIFF\0\0\0\0WAVE" + tail) == "audio"
    assert sniff_kind(b"RIFF\0\0\0\0WEBP" + tail) == "image"
    assert sniff_kind(b"\0\0\0\x18ftypisom" + tail) == "video"
    assert sniff_kind(b"\0\0\0\x18ftypM4A " + tail) == "audio"


def test_the_bundled_media_sniff_as_what_they_are() -> None:
    for name, kind in (("portrait.png", "image"), ("two_people.png", "image"), ("speech_person1.wav", "audio"),
                       ("reference.mp4", "video")):
        assert sniff_kind((MEDIA / name).read_bytes()[:32]) == kind, name


def test_check_upload_names_the_field_and_hides_the_temp_path(tmp_path: Path) -> None:
    fake = tmp_path / "gradio" / "abc123" / "speech.wav"
    fake.parent.mkdir(parents=True)
    fake.write_text("this is a text file, not audio at all\n")
    chk = check_upload(fake, "audio", "Audio, person 1")
    assert not chk.ok
    assert chk.message.startswith("Audio, person 1: speech.wav is not a file type")
    assert str(tmp_path) not in chk.message and "abc123" not in chk.message
    img = check_upload(MEDIA / "speech_person1.wav", "image", "Image")
    assert not img.ok and "is an audio file" in img.message and "Upload an image" in img.message
    ok = check_upload(MEDIA / "speech_person1.wav", "audio", "Audio, person 1")
    assert ok.ok and abs(ok.duration_s - 3.7115625) < 1e-6
    assert check_upload(None, "image", "Image").ok
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "is empty" in check_upload(empty, "image", "Image").message


def test_silent_header_only_wav_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "blank.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    chk = check_upload(p, "audio", "Audio, person 1")
    assert not chk.ok and "no sound" in chk.message
