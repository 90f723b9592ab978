"""client/payload.py: data: URIs under the limit, S3 upload (moto server) above it, contract checks."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from client.payload import (
    MediaSpec,
    PayloadTooLarge,
    S3UploadConfig,
    build_job_input,
    sniff_mime,
    validate_job_input,
)
from tests.client.conftest import MEDIA
from tests.worker.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY, start_moto_server


def test_small_files_become_data_uris() -> None:
    job, reports = build_job_input(MediaSpec(image=MEDIA / "portrait.png", audio1=MEDIA / "speech_person1.wav"),
                                   {"sampler": "turbo", "seed": None, "prompt": ""})
    assert job["image"].startswith("data:image/png;base64,")
    assert job["audio"]["person1"].startswith("data:audio/wav;base64,")
    assert base64.b64decode(job["image"].split(",", 1)[1]) == (MEDIA / "portrait.png").read_bytes()
    assert job["sampler"] == "turbo" and "seed" not in job and "prompt" not in job
    assert {r.field: r.how for r in reports} == {"image": "inline", "audio.person1": "inline"}


def test_two_speakers_and_remote_refs_pass_through() -> None:
    job, reports = build_job_input(
        MediaSpec(image="https://example.com/a.png", audio1=MEDIA / "speech_person1.wav",
                  audio2="s3://bucket/voice2.wav"),
        {"audio_type": "para"})
    assert job["image"] == "https://example.com/a.png"
    assert job["audio"]["person2"] == "s3://bucket/voice2.wav"
    assert {r.field: r.how for r in reports}["image"] == "ref"


def test_tts_payload() -> None:
    job, _ = build_job_input(MediaSpec(image=MEDIA / "portrait.png", tts_text="(s1) hello (s2) hi"), {})
    assert job["tts"] == {"text": "(s1) hello (s2) hi"}
    job, _ = build_job_input(MediaSpec(image=MEDIA / "portrait.png", tts_text="(s1) a (s2) b", tts_voice="alice",
                                       tts_voice2="bob"), {})
    assert job["tts"] == {"text": "(s1) a (s2) b", "voice": "alice", "voice2": "bob"}


def test_sniffing_ignores_misleading_names(tmp_path: Path) -> None:
    f = tmp_path / "upload.bin"
    f.write_bytes((MEDIA / "portrait.png").read_bytes())
    assert sniff_mime(f) == "image/png"
    assert sniff_mime(MEDIA / "reference.mp4") == "video/mp4"
    assert sniff_mime(MEDIA / "speech_person2.wav") == "audio/wav"


def test_invalid_input_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="frame_num"):
        build_job_input(MediaSpec(image=MEDIA / "portrait.png", audio1=MEDIA / "speech_person1.wav"), {"frame_num": 80})
    with pytest.raises(ValueError, match="image or a video"):
        build_job_input(MediaSpec(image=MEDIA / "portrait.png", video=MEDIA / "reference.mp4"), {})
    with pytest.raises(FileNotFoundError):
        build_job_input(MediaSpec(image="nope.png", audio1=MEDIA / "speech_person1.wav"), {})
    with pytest.raises(ValueError, match="audio"):
        validate_job_input({"image": "https://x/y.png"})


def _big_wav(path: Path, seconds: float) -> Path:
    import math
    import struct
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(int(16000 * seconds))))
    return path


def test_over_the_limit_without_s3_is_a_clear_error(tmp_path: Path) -> None:
    wav = _big_wav(tmp_path / "long.wav", 8)  # 256 KB; with a 200 KB limit it must move out
    with pytest.raises(PayloadTooLarge, match="S3"):
        build_job_input(MediaSpec(image=MEDIA / "portrait.png", audio1=wav), {}, limit_bytes=300_000)


def test_large_inputs_go_to_s3_as_presigned_urls(tmp_path: Path) -> None:
    wav = _big_wav(tmp_path / "long.wav", 8)
    with start_moto_server() as moto:
        moto.client().create_bucket(Bucket="inputs")
        cfg = S3UploadConfig(bucket="inputs", endpoint_url=moto.endpoint, access_key=TEST_ACCESS_KEY,
                             secret_key=TEST_SECRET_KEY, addressing_style="path")
        job, reports = build_job_input(MediaSpec(image=MEDIA / "portrait.png", audio1=wav), {},
                                       limit_bytes=400_000, s3=cfg)
        how = {r.field: r.how for r in reports}
        assert how == {"audio.person1": "s3", "image": "inline"}  # only the largest moved out
        url = job["audio"]["person1"]
        assert url.startswith(moto.endpoint) and "X-Amz-Signature" in url
        got = httpx.get(url, timeout=10)
        assert got.status_code == 200 and got.content == wav.read_bytes()
        assert got.headers["content-type"] == "audio/wav"
        assert len(json.dumps({"input": job})) < 400_000

        s3_style = S3UploadConfig(bucket="inputs", endpoint_url=moto.endpoint, access_key=TEST_ACCESS_KEY,
                                  secret_key=TEST_SECRET_KEY, addressing_style="path", ref_style="s3")
        job2, _ = build_job_input(MediaSpec(image=MEDIA / "portrait.png", audio1=wav), {},
                                  limit_bytes=400_000, s3=s3_style)
        bucket, key = job2["audio"]["person1"][len("s3://"):].split("/", 1)
        assert moto.client().get_object(Bucket=bucket, Key=key)["Body"].read() == wav.read_bytes()


def test_s3_config_from_env() -> None:
    assert S3UploadConfig.from_env({}) is None
    cfg = S3UploadConfig.from_env({"S3_BUCKET": "b", "S3_ENDPOINT": "http://x", "S3_ACCESS_KEY": "a"})
    assert cfg is not None and (cfg.bucket, cfg.endpoint_url, cfg.access_key, cfg.region) == ("b", "http://x", "a", "us-east-1")
