"""media_guard: decompression bombs refused from headers; corrupt media named clearly."""
from __future__ import annotations

import io
import struct
import time
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.errors import ErrorCode, JobError
from worker.inputs.media_guard import MediaLimits, check_audio, check_image, check_video
from worker.media.mux import Mp4Writer


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h; the IDAT is a few bytes of nothing."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")


def test_png_claiming_100000x100000_refused_without_decoding(tmp_path: Path) -> None:
    f = tmp_path / "bomb.png"
    f.write_bytes(bomb_png(100_000, 100_000))
    t0 = time.perf_counter()
    with pytest.raises(JobError) as ei:
        check_image(f)
    assert time.perf_counter() - t0 < 1.0
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    assert "pixel" in ei.value.message
    # just over our cap (below PIL's own 2x guard) is refused by the header check too
    f2 = tmp_path / "over.png"
    f2.write_bytes(bomb_png(1001, 1000))
    with pytest.raises(JobError) as ei:
        check_image(f2, MediaLimits(max_image_pixels=1_000_000))
    assert "1001x1000" in ei.value.message


def test_good_truncated_and_corrupt_images(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    good = tmp_path / "ok.png"
    good.write_bytes(buf.getvalue())
    info = check_image(good)
    assert (info.width, info.height, info.format) == (48, 64, "PNG")

    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(JobError) as ei:
        check_image(trunc)
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION and "corrupt" in ei.value.message

    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    with pytest.raises(JobError) as ei:
        check_image(junk)
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION


@pytest.fixture()
def tiny_video(tmp_path: Path) -> Path:
    out = tmp_path / "tiny.mp4"
    audio = (0.1 * np.sin(np.arange(16000) / 10)).astype(np.float32)
    with Mp4Writer(out, audio) as w:
        w.write_frames(np.full((25, 48, 64, 3), 128, dtype=np.uint8))
    return out


def test_tiny_real_video(tiny_video: Path) -> None:
    info = check_video(tiny_video)
    assert (info.width, info.height) == (64, 48)
    assert info.num_frames == 25 and abs(info.duration_s - 1.0) < 0.05 and info.has_audio
    with pytest.raises(JobError, match="exceed") as ei:
        check_video(tiny_video, MediaLimits(max_video_pixels=32 * 32))
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    with pytest.raises(JobError, match="limit"):
        check_video(tiny_video, MediaLimits(max_video_duration_s=0.5))
    with pytest.raises(JobError, match="frames"):
        check_video(tiny_video, MediaLimits(max_video_frames=10))
    # the soundtrack of a video is acceptable audio
    assert abs(check_audio(tiny_video).duration_s - 1.0) < 0.05


def test_corrupt_video(tmp_path: Path, tiny_video: Path) -> None:
    f = tmp_path / "bad.mp4"
    f.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x13" * 4000)
    with pytest.raises(JobError) as ei:
        check_video(f)
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION and "corrupt" in ei.value.message
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(tiny_video.read_bytes()[:2000])
    with pytest.raises(JobError):
        check_video(cut)


def test_audio_duration_cap(tmp_path: Path) -> None:
    f = tmp_path / "a.wav"
    with wave.open(str(f), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 16000 * 3)
    info = check_audio(f)
    assert abs(info.duration_s - 3.0) < 0.01 and info.sample_rate == 16000
    with pytest.raises(JobError) as ei:
        check_audio(f, MediaLimits(max_audio_duration_s=2.0))
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION and "limit" in ei.value.message
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + b"\x01" * 100)
    with pytest.raises(JobError):
        check_audio(junk)


def _wav(channels: int, rate: int, seconds: float, fmt_tag: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * channels * int(rate * seconds))
    data = bytearray(buf.getvalue())
    data[20:22] = struct.pack("<H", fmt_tag)  # the fmt chunk's codec tag
    return bytes(data)


def test_audio_with_a_codec_ffmpeg_cannot_decode_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    """A WAV whose format tag is 0 (or any unknown codec) opens with no decoder: PyAV gives the stream no codec
    context, which used to be an AttributeError (E_INTERNAL)."""
    for tag in (0, 0x1234):
        p = tmp_path / f"tag{tag}.wav"
        p.write_bytes(_wav(1, 16000, 0.5, fmt_tag=tag))
        with pytest.raises(JobError) as e:
            check_audio(p)
        assert e.value.code is ErrorCode.E_INPUT_VALIDATION and e.value.details["reason"] == "corrupt", e.value


def test_audio_that_would_decode_to_gigabytes_is_refused_from_its_header(tmp_path: Path) -> None:
    """Duration alone is not enough: 8 channels at 384 kHz for 28 minutes is 20 GB of float32 once decoded,
    from a FLAC of a few hundred bytes (silence) — refused from STREAMINFO, before a sample is decoded."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros((38400, 8), np.float32), 384000, format="FLAC")
    data = bytearray(buf.getvalue())
    word = int.from_bytes(data[18:26], "big")  # STREAMINFO: rate, channels, bits, then 36 bits of total samples
    data[18:26] = ((word & ~((1 << 36) - 1)) | (1700 * 384000)).to_bytes(8, "big")
    p = tmp_path / "bomb.flac"
    p.write_bytes(bytes(data))
    t0 = time.perf_counter()
    with pytest.raises(JobError) as e:
        check_audio(p, MediaLimits(max_audio_duration_s=1800))
    assert e.value.details["reason"] == "too_large_decoded" and "8 channel" in e.value.message
    assert time.perf_counter() - t0 < 2
    # the limit is on seconds x rate x channels x 4 bytes, to the sample
    p.write_bytes(_wav(2, 48000, 1.0))
    assert check_audio(p, MediaLimits(max_audio_decoded_bytes=48000 * 2 * 4 + 64)).channels == 2
    with pytest.raises(JobError):
        check_audio(p, MediaLimits(max_audio_decoded_bytes=48000 * 2 * 4 - 64))


def _streamed_mkv(seconds: int, rate: int = 25) -> bytes:
    """Matroska written to a pipe, as a browser's MediaRecorder writes WebM: no duration in the header."""
    import subprocess

    return subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                           f"testsrc=size=64x48:rate={rate}:d={seconds}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                           "-f", "matroska", "-"], check=True, capture_output=True, timeout=60).stdout


def test_a_streamed_video_without_a_duration_is_measured_from_its_packets(tmp_path: Path) -> None:
    """It was refused as 'unknown duration'; now its packets are counted (no decoding) and held to the caps."""
    p = tmp_path / "streamed.mkv"
    p.write_bytes(_streamed_mkv(3))
    import av

    with av.open(str(p)) as c:  # the premise: the container says nothing of its length
        assert not c.duration and not c.streams.video[0].duration and not c.streams.video[0].frames
    info = check_video(p)
    assert info.num_frames == 75 and info.duration_s == pytest.approx(3.0, abs=0.05)
    with pytest.raises(JobError) as e:
        check_video(p, MediaLimits(max_video_duration_s=2.0))
    assert e.value.details["reason"] == "too_long"
    with pytest.raises(JobError) as e:
        check_video(p, MediaLimits(max_video_frames=60))
    assert e.value.details["reason"] == "too_many_frames"
