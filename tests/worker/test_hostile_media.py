"""Broken and hostile media through the worker's real job path (fetch → guard → decode → tiny model → MP4).

Every file is made here (PIL, soundfile, PyAV, the ffmpeg CLI for container tricks). Each job either makes a
playable MP4 (h264 + aac, the frame count its duration says) or fails with a specific code whose message and
hint name the job field — never E_INTERNAL, a raw exception, or a file left behind.
"""
from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from configuration import compose_config
from contract.errors import ErrorCode, JobError
from tests.contract.test_errors import assert_human
from worker.job import JobContext, run_job
from worker.media.mux import probe_mp4

REPO = Path(__file__).resolve().parents[2]
MEDIA = REPO / "examples" / "media"
FRAMES = 13  # clip mode, the smallest clip with the default motion_frame
BASE = {"mode": "clip", "frame_num": FRAMES, "sampler": "turbo", "seed": 1, "output": {"target": "local"}}
SPEECH = MEDIA / "speech_person1.wav"
PORTRAIT = MEDIA / "portrait.png"
REFUSED = (ErrorCode.E_INPUT_VALIDATION, ErrorCode.E_AUDIO_EMBEDDING)


# ------------------------------------------------------------------------------------------------ the job


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, files) -> JobContext:
    tmp = tmp_path_factory.mktemp("hostile-job")
    cfg = compose_config([f"server.cache_dir={tmp_path_factory.getbasetemp() / 'hostile-cache'}",
                          f"server.work_dir={tmp / 'work'}", f"storage.local.root={tmp / 'outputs'}"])
    return JobContext.create(cfg, extra_roots=[files, MEDIA])


def payload(field: str, path: Path) -> dict:
    p = {**BASE, "image": str(PORTRAIT), "audio": str(SPEECH)}
    if field == "video":
        p.pop("image")
    p[field] = str(path)
    return p


def job(ctx: JobContext, field: str, path: Path, job_id: str = "hostile") -> dict | JobError:
    """The job's result, or its JobError after the checks every failure must pass."""
    work = Path(ctx.cfg.server.work_dir)
    outputs = Path(ctx.cfg.storage.local.root)
    before = set(outputs.rglob("*")) if outputs.exists() else set()
    try:
        out = run_job(job_id, payload(field, path), ctx, lambda _e: None)
    except JobError as err:
        assert err.code in REFUSED, err.to_error_string()
        shown = "audio.person1" if field == "audio" else field
        assert err.message.startswith(f"{shown}: "), err.message
        assert (err.details or {}).get("field") == shown, err.details
        # the sender's own path may be echoed; the worker's job folder may not
        assert str(work) not in err.message + (err.hint or "")
        assert not re.search(r"(image|audio|video)-[0-9a-f]{12}", err.message), err.message  # the worker's file name
        root = str(path.parent)
        assert_human(JobError(err.code, err.message.replace(root, "<files>"), (err.hint or "").replace(root, "<files>"),
                              err.details))
        after = set(outputs.rglob("*")) if outputs.exists() else set()
        assert after == before, after - before  # nothing half-written where results go
        assert not any(work.iterdir()), list(work.iterdir())  # the job folder went too
        return err
    probe = probe_mp4(out["video_path"])
    assert (probe.video_codec, probe.audio_codec) == ("h264", "aac")
    # a clip of FRAMES, or fewer when the audio is shorter than that
    assert 1 <= probe.num_frames == out["num_frames"] <= FRAMES
    assert probe.duration_s == pytest.approx(probe.num_frames / 25, abs=1 / 25 + 1e-3)
    with av.open(out["video_path"]) as c:
        assert c.streams.video and c.streams.audio
        assert sum(1 for _ in c.decode(video=0)) == probe.num_frames
    with av.open(out["video_path"]) as c:
        assert sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].rate == pytest.approx(
            probe.duration_s, abs=0.1)
    return out


def ok(result, frames: int = FRAMES) -> dict:
    assert isinstance(result, dict), result.to_error_string()
    assert result["num_frames"] == frames
    return result


def refused(result, code: ErrorCode = ErrorCode.E_INPUT_VALIDATION, *words: str) -> JobError:
    assert isinstance(result, JobError), f"expected {code.value}, the job made {result.get('video_path')}"
    assert result.code is code, result.to_error_string()
    for w in words:
        assert w in result.message, (w, result.message)
    return result


# ---------------------------------------------------------------------------------------------- makers


def image_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def face(w: int = 80, h: int = 96) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3)).astype(np.uint8))


def png_claiming(w: int, h: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares w x h RGB pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def tone(seconds: float = 1.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def wav_bytes(data: np.ndarray, sr: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    b = io.BytesIO()
    sf.write(b, data, sr, subtype=subtype, format=fmt)
    return b.getvalue()


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True, timeout=60)


def write(files: Path, name: str, data: bytes) -> Path:
    p = files / name
    p.write_bytes(data)
    return p


@pytest.fixture(scope="module")
def video(files) -> Path:
    """2 s of 128x96 test pattern at 25 fps with a tone."""
    p = files / "good.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=128x96:rate=25:d=2", "-f", "lavfi", "-i", "sine=f=300:d=2",
           "-shortest", "-pix_fmt", "yuv420p", str(p))
    return p


# ---------------------------------------------------------------------------------------------- images


def _exif6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; a viewer turns it 90° clockwise
    return image_bytes(face(96, 80), "JPEG", exif=exif)


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(5)]
    return image_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


IMAGE_OK = {
    "one_pixel.png": lambda: image_bytes(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
    "thin.png": lambda: image_bytes(Image.new("RGB", (2, 10000), (200, 10, 10)), "PNG"),
    "wide.png": lambda: image_bytes(Image.new("RGB", (10000, 2), (200, 10, 10)), "PNG"),
    "grey16.png": lambda: image_bytes(Image.fromarray((np.arange(80 * 96).reshape(96, 80) * 7).astype(np.uint16)), "PNG"),
    "cmyk.jpg": lambda: image_bytes(face().convert("CMYK"), "JPEG"),
    "palette_transparent.png": lambda: image_bytes(face().convert("P"), "PNG", transparency=0),
    "la.png": lambda: image_bytes(face().convert("LA"), "PNG"),
    "rgba.png": lambda: image_bytes(face().convert("RGBA"), "PNG"),
    "exif_rotated.jpg": _exif6,
    "animated.gif": lambda: _animated("GIF"),
    "animated.webp": lambda: _animated("WEBP"),
    "pages.tif": lambda: image_bytes(Image.new("RGB", (64, 64)), "TIFF", save_all=True,
                                     append_images=[Image.new("RGB", (64, 64), (0, i, 0)) for i in range(100)]),
    "float.tif": lambda: image_bytes(Image.fromarray(np.random.default_rng(1).random((64, 64)).astype(np.float32)), "TIFF"),
}

IMAGE_REFUSED = {
    "zero.png": (lambda: b"", "empty"),
    "truncated.png": (lambda: image_bytes(face(), "PNG")[:400], "truncated"),
    "truncated.jpg": (lambda: image_bytes(face(), "JPEG")[:600], "truncated"),
    "bomb_huge.png": (lambda: png_claiming(100_000, 100_000), "10000000000 pixels exceeds the limit of"),
    "bomb_just_over.png": (lambda: png_claiming(7000, 7000), "exceeds the limit"),
    "text.png": (lambda: b"this is not an image\n" * 10, "not a supported image"),
    "drawing.png": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "not a supported image"),
}


@pytest.mark.parametrize("name", sorted(IMAGE_OK))
def test_odd_but_valid_images_make_a_video(ctx, files, name):
    ok(job(ctx, "image", write(files, name, IMAGE_OK[name]())))


@pytest.mark.parametrize("name", sorted(IMAGE_REFUSED))
def test_broken_images_are_refused_naming_the_field(ctx, files, name):
    make, words = IMAGE_REFUSED[name]
    refused(job(ctx, "image", write(files, name, make())), ErrorCode.E_INPUT_VALIDATION, words)


def test_an_exif_rotated_photo_renders_upright(ctx, files):
    """Stored 96x80 (landscape) with orientation 6: a viewer shows it 80x96 (portrait), and so must the video."""
    out = ok(job(ctx, "image", write(files, "upright.jpg", _exif6())))
    assert out["height"] > out["width"], (out["width"], out["height"])


def test_a_decompression_bomb_is_refused_before_its_pixels_are_decoded(files):
    """Header-only: the guard runs in a fresh process whose peak memory stays far below the declared pixels."""
    huge = write(files, "bomb_mem.png", png_claiming(30_000, 30_000))  # 2.7 GB as RGB
    near = write(files, "bomb_mem2.png", png_claiming(7000, 7000))  # 147 MB as RGB, over the 40 MP cap
    code = (
        "import resource, sys\n"
        "from worker.inputs.media_guard import check_image\n"
        "from contract.errors import JobError\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n        check_image(p)\n    except JobError as e:\n        assert e.details['reason'] == 'too_many_pixels', e\n"
        "    else:\n        raise SystemExit('accepted ' + p)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(huge), str(near)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) < 50_000  # KiB: nothing near 147 MB was allocated


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["PNG", "JPEG", "WEBP"]), cut=st.floats(0.0, 0.99))
def test_truncated_images_never_crash_the_job(ctx, files, fmt, cut):
    data = image_bytes(face(), fmt)
    result = job(ctx, "image", write(files, f"cut.{fmt.lower()}", data[: max(1, int(len(data) * cut))]))
    if isinstance(result, JobError):
        assert result.code is ErrorCode.E_INPUT_VALIDATION


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.integers(0, 200), value=st.integers(0, 255))
def test_png_header_corruptions_never_crash_the_job(ctx, files, where, value):
    data = bytearray(image_bytes(face(), "PNG"))
    data[where % len(data)] = value
    job(ctx, "image", write(files, "flipped.png", bytes(data)))


# ----------------------------------------------------------------------------------------------- audio


def _header_claims_more() -> bytes:
    pcm = (tone(0.5) * 32767).astype("<i2").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + 10_000_000) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
            + b"data" + struct.pack("<I", 10_000_000) + pcm)


def _with(value: float) -> bytes:
    x = tone()
    x[100] = value
    return wav_bytes(x, 16000, "FLOAT")


def _flac_declaring(seconds: float, sr: int = 384000, channels: int = 8, x: np.ndarray | None = None) -> bytes:
    """A FLAC (0.1 s of silence, or `x`) whose STREAMINFO declares `seconds`: a few hundred bytes that would
    decode to gigabytes, or with 0 a streamed FLAC of unknown length."""
    x = np.zeros((sr // 10, channels), np.float32) if x is None else x
    data = bytearray(wav_bytes(x, sr, "PCM_16", "FLAC"))
    assert data[:4] == b"fLaC"
    word = int.from_bytes(data[18:26], "big")
    data[18:26] = ((word & ~((1 << 36) - 1)) | int(seconds * sr)).to_bytes(8, "big")
    return bytes(data)


AUDIO_OK = {
    "header_claims_more.wav": _header_claims_more,
    "silence.wav": lambda: wav_bytes(np.zeros(16000, np.float32), 16000),
    "eight_channels.wav": lambda: wav_bytes(np.stack([tone()] * 8, 1), 16000),
    "rate_8k.wav": lambda: wav_bytes(tone(1.0, 8000), 8000),
    "rate_384k.wav": lambda: wav_bytes(tone(1.0, 384000), 384000),
    "pcm24.wav": lambda: wav_bytes(tone(), 16000, "PCM_24"),
    "ogg.ogg": lambda: wav_bytes(tone(), 16000, "VORBIS", "OGG"),
    "length_unknown.flac": lambda: _flac_declaring(0, 16000, 1, tone()),
    "length_understated.flac": lambda: _flac_declaring(0.6, 16000, 1, tone()),
}

AUDIO_REFUSED = {
    "zero_length.wav": (lambda: wav_bytes(np.zeros(0, np.float32), 16000), ErrorCode.E_AUDIO_EMBEDDING, "empty"),
    "one_sample.wav": (lambda: wav_bytes(np.zeros(1, np.float32), 16000), ErrorCode.E_AUDIO_EMBEDDING, "too short"),
    "nan.wav": (lambda: _with(np.nan), ErrorCode.E_AUDIO_EMBEDDING, "NaN"),
    "inf.wav": (lambda: _with(np.inf), ErrorCode.E_AUDIO_EMBEDDING, "infinite"),
    "broken.flac": (lambda: (lambda b: b[: len(b) // 3] + b"\x00" * 100)(wav_bytes(tone(), 16000, fmt="FLAC")),
                    ErrorCode.E_AUDIO_EMBEDDING, "decode"),
    "broken.ogg": (lambda: (lambda b: b[: len(b) // 3])(wav_bytes(tone(), 16000, "VORBIS", "OGG")),
                   ErrorCode.E_AUDIO_EMBEDDING, "corrupt"),
    "header_only.mp3": (lambda: b"\xff\xfb\x90\x64", ErrorCode.E_AUDIO_EMBEDDING, "corrupt"),
    "too_long.flac": (lambda: _flac_declaring(1900, 8000, 1), ErrorCode.E_INPUT_VALIDATION, "exceeds the limit"),
    "decodes_to_gigabytes.flac": (lambda: _flac_declaring(1700), ErrorCode.E_INPUT_VALIDATION, "decodes to"),
    "picture.png": (lambda: image_bytes(face(), "PNG"), ErrorCode.E_INPUT_VALIDATION, "not a supported audio"),
}


@pytest.mark.parametrize("name", sorted(AUDIO_OK))
def test_odd_but_valid_audio_makes_a_video(ctx, files, name):
    ok(job(ctx, "audio", write(files, name, AUDIO_OK[name]())))


@pytest.mark.parametrize("name", sorted(AUDIO_REFUSED))
def test_broken_audio_is_refused_naming_the_field(ctx, files, name):
    make, code, words = AUDIO_REFUSED[name]
    refused(job(ctx, "audio", write(files, name, make())), code, words)


def _mp4_sound(path: str) -> np.ndarray:
    with av.open(path) as c:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])


@pytest.mark.parametrize("gain", [1.0, 3e7])
def test_a_float_wav_past_full_scale_plays_unclipped(ctx, files, gain):
    """A float WAV at +-1e7 (never normalised by the tool that wrote it; its loudness reads past 100 LUFS) sounds in
    the MP4 as the same speech within full scale does: loudness-normalised, not a clipped square wave."""
    speech, _ = sf.read(SPEECH, dtype="float32")
    name = f"hot_{gain:g}.wav"
    out = ok(job(ctx, "audio", write(files, name, wav_bytes(speech * np.float32(gain), 16000, "FLOAT")),
                 job_id=f"hot-{gain:g}"))
    sound = _mp4_sound(out["video_path"])
    assert float(np.mean(np.abs(sound) > 0.98)) < 0.001, "the soundtrack clips"
    if gain != 1.0:
        ref = _mp4_sound(ok(job(ctx, "audio", write(files, "hot_ref.wav", wav_bytes(speech, 16000, "FLOAT")),
                                job_id="hot-ref"))["video_path"])
        n = min(len(ref), len(sound))
        assert float(np.sqrt(np.mean(sound[:n] ** 2))) == pytest.approx(float(np.sqrt(np.mean(ref[:n] ** 2))), rel=0.05)


def test_a_video_file_as_audio_uses_its_soundtrack_and_one_without_is_refused(ctx, files, video):
    ok(job(ctx, "audio", video))
    silent = files / "no_audio.mp4"
    ffmpeg("-i", str(video), "-an", "-c", "copy", str(silent))
    refused(job(ctx, "audio", silent), ErrorCode.E_INPUT_VALIDATION, "no audio stream")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["WAV", "FLAC", "OGG"]), cut=st.floats(0.0, 0.99))
def test_truncated_audio_never_crashes_the_job(ctx, files, fmt, cut):
    data = wav_bytes(tone(), 16000, "VORBIS" if fmt == "OGG" else "PCM_16", fmt)
    job(ctx, "audio", write(files, f"cut.{fmt.lower()}", data[: max(1, int(len(data) * cut))]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.integers(0, 43), value=st.integers(0, 255))
def test_wav_header_corruptions_never_crash_the_job(ctx, files, where, value):
    data = bytearray(wav_bytes(tone(), 16000))
    data[where] = value
    job(ctx, "audio", write(files, "flipped.wav", bytes(data)))


# --------------------------------------------------------------------------------------- reference video


@pytest.fixture(scope="module")
def videos(files, video) -> dict[str, Path]:
    out = {}

    def make(name: str, *args: str) -> None:
        out[name] = files / name
        ffmpeg(*args, str(out[name]))

    src = ("-f", "lavfi", "-i", "testsrc=size=128x96:rate=25:d=2")
    make("odd_33x17.mp4", "-f", "lavfi", "-i", "testsrc=size=33x17:rate=25:d=2", "-pix_fmt", "yuv444p")
    make("ten_bit.mp4", *src, "-pix_fmt", "yuv420p10le", "-c:v", "libx264")
    make("vfr.mp4", *src, "-vf", "setpts='if(lt(N,10),N*2,N+10)/TB/25'", "-fps_mode", "vfr", "-pix_fmt", "yuv420p")
    make("rotated.mp4", "-i", str(video), "-c", "copy", "-metadata:s:v:0", "rotate=90")
    make("late_start.mp4", "-i", str(video), "-c", "copy", "-output_ts_offset", "5")
    out["streamed.mkv"] = write(files, "streamed.mkv", subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(video), "-c", "copy", "-f", "matroska", "-"],
        check=True, capture_output=True, timeout=60).stdout)  # to a pipe: no duration in the header
    make("one_frame.mp4", "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=0.04", "-frames:v", "1", "-pix_fmt", "yuv420p")
    make("audio_only.mp4", "-f", "lavfi", "-i", "sine=f=300:d=2", "-c:a", "aac")
    make("no_frames.mp4", *src, "-frames:v", "0", "-pix_fmt", "yuv420p")
    data = bytearray(video.read_bytes())
    at = data.find(b"moov")
    data[at + 8: at + 200] = b"\xff" * 192
    out["corrupt_moov.mp4"] = write(files, "corrupt_moov.mp4", bytes(data))
    out["truncated.mp4"] = write(files, "truncated.mp4", video.read_bytes()[: video.stat().st_size // 2])
    out["still.png"] = write(files, "still.png", image_bytes(face(), "PNG"))
    return out


VIDEO_OK = ["odd_33x17.mp4", "ten_bit.mp4", "vfr.mp4", "one_frame.mp4", "late_start.mp4", "streamed.mkv"]
VIDEO_REFUSED = {"audio_only.mp4": "no video stream", "no_frames.mp4": "no video stream",
                 "corrupt_moov.mp4": "video", "truncated.mp4": "corrupt", "still.png": "not a supported video"}


@pytest.mark.parametrize("name", VIDEO_OK)
def test_odd_but_valid_reference_videos_make_a_video(ctx, videos, name):
    ok(job(ctx, "video", videos[name]))


@pytest.mark.parametrize("name", sorted(VIDEO_REFUSED))
def test_broken_reference_videos_are_refused_naming_the_field(ctx, videos, name):
    refused(job(ctx, "video", videos[name]), ErrorCode.E_INPUT_VALIDATION, VIDEO_REFUSED[name])


def test_a_rotated_phone_video_renders_upright(ctx, videos):
    """128x96 frames with a 90° display rotation are shown 96x128 (portrait); the dubbed video keeps that."""
    out = ok(job(ctx, "video", videos["rotated.mp4"]))
    assert out["height"] > out["width"], (out["width"], out["height"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.05, 0.99))
def test_truncated_reference_videos_never_crash_the_job(ctx, files, video, cut):
    data = video.read_bytes()
    job(ctx, "video", write(files, "cut.mp4", data[: int(len(data) * cut)]))



@pytest.mark.parametrize("name", ["nan.wav", "broken.flac", "one_sample.wav"])
def test_a_broken_second_speaker_is_named_as_audio_person2(ctx, files, name):
    """Two speakers, the second file broken: the error names audio.person2 (the first is fine), with no path of
    the worker's in it, and nothing is left behind."""
    make, code, words = AUDIO_REFUSED[name]
    bad = write(files, f"p2-{name}", make())
    p = {**BASE, "image": str(MEDIA / "two_people.png"), "audio_type": "para",
         "audio": {"person1": str(SPEECH), "person2": str(bad)}}
    work = Path(ctx.cfg.server.work_dir)
    with pytest.raises(JobError) as info:
        run_job("two", p, ctx, lambda _e: None)
    err = info.value
    assert err.code is code and err.message.startswith("audio.person2: ") and words in err.message, err.message
    assert err.details["field"] == "audio.person2" and str(work) not in err.message
    assert not any(work.iterdir())
