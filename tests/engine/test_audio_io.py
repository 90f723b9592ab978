"""Audio preparation: parity with the golden audio_embedding case(s) plus decode/merge edge cases."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from tests.conftest import golden_cases
from worker.engine.audio_io import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    MergedAudio,
    duration_s,
    fit_peak,
    load_audio_16k,
    loudness_normalize,
    merge_speakers,
    prepare_audio,
    video_frames_for,
)
from worker.engine.errors import AudioDecodeError, EngineError

ATOL = 1e-4


def _is_audio_case(p: Path) -> bool:
    return (p / "wav2vec2_tiny").is_dir() and (p / "tensors.safetensors").is_file() and (p / "speech_person1.wav").is_file()


AUDIO_CASES = golden_cases(_is_audio_case)


def _close(got: np.ndarray, want: np.ndarray, name: str) -> None:
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
    assert err <= ATOL, f"{name}: max abs err {err}"


# ---------------------------------------------------------------- golden parity


@pytest.mark.parametrize("case", AUDIO_CASES, ids=lambda p: p.name)
def test_resample_and_loudnorm_match_golden(case: Path):
    t = load_file(str(case / "tensors.safetensors"))
    y = load_audio_16k(case / "speech_person1.wav")
    assert y.dtype == np.float32
    if "p1_resampled_16k" in t:
        _close(y, t["p1_resampled_16k"], "p1_resampled_16k")
    n = loudness_normalize(y)
    assert n.dtype == np.float32
    if "p1_loudnorm_16k" in t:
        _close(n, t["p1_loudnorm_16k"], "p1_loudnorm_16k")
    np.testing.assert_array_equal(prepare_audio(case / "speech_person1.wav"), n)


@pytest.mark.parametrize("case", AUDIO_CASES, ids=lambda p: p.name)
def test_add_merge_matches_golden(case: Path):
    t = load_file(str(case / "tensors.safetensors"))
    if not (case / "speech_person2.wav").is_file() or "add_sum_16k" not in t:
        pytest.skip("case has no two-speaker add data")
    m = merge_speakers(prepare_audio(case / "speech_person1.wav"), prepare_audio(case / "speech_person2.wav"), "add")
    assert isinstance(m, MergedAudio) and m.mode == "add"
    for name, arr in (("add_person1_16k", m.person1), ("add_person2_16k", m.person2), ("add_sum_16k", m.soundtrack)):
        assert arr.dtype == np.float32
        _close(arr, t[name], name)


@pytest.mark.parametrize("case", AUDIO_CASES, ids=lambda p: p.name)
def test_seq_len_matches_meta(case: Path):
    import json

    meta_path = case / "meta.json"
    if not meta_path.is_file():
        pytest.skip("no meta.json")
    meta = json.loads(meta_path.read_text())
    if "seq_len_p1" not in meta:
        pytest.skip("meta.json has no seq_len_p1")
    assert video_frames_for(load_audio_16k(case / "speech_person1.wav")) == meta["seq_len_p1"]


# ---------------------------------------------------------------- decode errors


def _write_tone(path: Path, seconds: float, sr: int = 22050, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    mono = amp * np.sin(2 * np.pi * 220.0 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    data = np.stack([mono * (1 + 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)
    sf.write(str(path), data, sr, subtype="PCM_16")
    return data


def test_corrupt_file_raises(tmp_path: Path):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioDecodeError):
        load_audio_16k(bad)


def test_random_bytes_with_mp3_name_raises(tmp_path: Path):
    bad = tmp_path / "noise.mp3"
    bad.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(AudioDecodeError):
        load_audio_16k(bad)


def test_empty_file_raises(tmp_path: Path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio_16k(empty)


def test_header_only_wav_raises(tmp_path: Path):
    path = tmp_path / "zero_frames.wav"
    sf.write(str(path), np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(AudioDecodeError):
        load_audio_16k(path)


def test_too_short_raises(tmp_path: Path):
    path = tmp_path / "short.wav"
    sf.write(str(path), np.full(MIN_SAMPLES - 1, 0.1, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioDecodeError, match="too short"):
        load_audio_16k(path)


def test_missing_file_raises(tmp_path: Path):
    with pytest.raises(AudioDecodeError, match="not found"):
        load_audio_16k(tmp_path / "nope.wav")


def test_audio_decode_error_is_engine_error():
    assert issubclass(AudioDecodeError, EngineError)


# ---------------------------------------------------------------- decode behaviour


def test_stereo_is_averaged_like_librosa(tmp_path: Path):
    import librosa

    path = tmp_path / "stereo.wav"
    _write_tone(path, 1.0, sr=22050, channels=2)
    got = load_audio_16k(path)
    want, _ = librosa.load(str(path), sr=16000)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_16k_input_is_not_resampled(tmp_path: Path):
    path = tmp_path / "native.wav"
    sf.write(str(path), np.linspace(-0.5, 0.5, 16000, dtype=np.float32), 16000, subtype="FLOAT")
    got = load_audio_16k(path)
    np.testing.assert_array_equal(got, np.linspace(-0.5, 0.5, 16000, dtype=np.float32))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
@pytest.mark.parametrize("ext,codec", [("mp3", ["-c:a", "libmp3lame", "-b:a", "128k"]), ("m4a", ["-c:a", "aac", "-b:a", "128k"]),
                                       ("ogg", ["-c:a", "libvorbis"]), ("flac", ["-c:a", "flac"])])
def test_compressed_formats_decode_to_right_duration(tmp_path: Path, ext: str, codec: list[str]):
    src = tmp_path / "src.wav"
    seconds = 1.5
    _write_tone(src, seconds, sr=44100, channels=2)
    out = tmp_path / f"clip.{ext}"
    proc = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *codec, str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"ffmpeg cannot encode {ext}: {proc.stderr.strip()[:200]}")
    y = load_audio_16k(out)
    assert y.dtype == np.float32 and y.ndim == 1
    # Lossy codecs add a few ms of encoder delay/padding at most.
    assert abs(duration_s(y) - seconds) < 0.06, duration_s(y)
    assert 0.05 < float(np.sqrt(np.mean(y**2))) < 0.5


# ---------------------------------------------------------------- loudness


def test_silence_left_unchanged():
    silence = np.zeros(SAMPLE_RATE * 2, dtype=np.float32)
    out = loudness_normalize(silence)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, silence)


def test_shorter_than_meter_block_left_unchanged():
    x = np.full(int(0.3 * SAMPLE_RATE), 0.2, dtype=np.float32)
    np.testing.assert_array_equal(loudness_normalize(x), x)


def test_reaches_target_and_keeps_float32():
    import pyloudnorm as pyln

    t = np.arange(SAMPLE_RATE * 3) / SAMPLE_RATE
    x = (0.05 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    out = loudness_normalize(x, target=-23.0)
    assert out.dtype == np.float32
    assert abs(pyln.Meter(SAMPLE_RATE).integrated_loudness(out) - (-23.0)) < 0.01
    # also when given float64 input: the engine keeps float32 throughout
    assert loudness_normalize(x.astype(np.float64)).dtype == np.float32


@pytest.mark.parametrize("gain", [0.05, 0.5, 1.0, 3.0, 1e3, 1e6, 3e7])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_float_file_past_full_scale_is_prepared_like_the_same_speech_within_it(tmp_path_factory, gain, seed):
    """Loudness normalisation makes the level of an upload not matter (above the meter's -70 LUFS gate, where
    speech is all but silent), including a float WAV whose samples reach
    +-1e6 (it was left un-normalised, its loudness reading as > 100 LUFS, and the model heard it at another level)."""
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
         + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    folder = tmp_path_factory.mktemp("gain")
    sf.write(folder / "ref.wav", x, SAMPLE_RATE, subtype="FLOAT")
    sf.write(folder / "scaled.wav", x * np.float32(gain), SAMPLE_RATE, subtype="FLOAT")
    ref, scaled = prepare_audio(folder / "ref.wav"), prepare_audio(folder / "scaled.wav")
    np.testing.assert_allclose(scaled, ref, rtol=0, atol=2e-5)


@settings(max_examples=40, deadline=None)
@given(peak=st.floats(1e-3, 1e7), n=st.integers(1, 4000), seed=st.integers(0, 2**16))
def test_the_soundtrack_never_passes_full_scale_and_keeps_its_shape(peak, n, seed):
    """The muxed sound is scaled, never clipped: within full scale it is untouched, past it one gain brings the
    peak to exactly 1 (AAC would otherwise clip the peaks, which is audible)."""
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    x *= np.float32(peak / max(float(np.max(np.abs(x))), 1e-12))
    out = fit_peak(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    top = float(np.max(np.abs(x)))
    if top <= 1.0:
        assert out is x
    else:
        assert float(np.max(np.abs(out))) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(out * np.float32(top), x, rtol=1e-5, atol=1e-6 * top)


# ---------------------------------------------------------------- merge


def test_para_merge_pads_shorter_to_longer():
    a1 = np.full(1000, 0.1, dtype=np.float32)
    a2 = np.full(1600, 0.2, dtype=np.float32)
    m = merge_speakers(a1, a2, "para")
    assert m.person1.shape == m.person2.shape == m.soundtrack.shape == (1600,)
    assert all(a.dtype == np.float32 for a in (m.person1, m.person2, m.soundtrack))
    np.testing.assert_array_equal(m.person1[:1000], a1)
    assert not m.person1[1000:].any()
    np.testing.assert_array_equal(m.person2, a2)
    np.testing.assert_array_equal(m.soundtrack, m.person1 + m.person2)
    assert m.duration_s == pytest.approx(0.1)
    # symmetric: the shorter one may also be person 2
    m2 = merge_speakers(a2, a1, "para")
    assert m2.soundtrack.shape == (1600,) and not m2.person2[1000:].any()


def test_add_merge_layout():
    a1 = np.full(700, 0.1, dtype=np.float32)
    a2 = np.full(300, 0.2, dtype=np.float32)
    m = merge_speakers(a1, a2, "add")
    assert m.soundtrack.shape == (1000,)
    np.testing.assert_array_equal(m.person1[:700], a1)
    assert not m.person1[700:].any()
    assert not m.person2[:700].any()
    np.testing.assert_array_equal(m.person2[700:], a2)
    np.testing.assert_array_equal(m.soundtrack, np.concatenate([a1, a2]))


def test_merge_is_frozen_and_rejects_unknown_mode():
    m = merge_speakers(np.zeros(10, np.float32), np.zeros(10, np.float32), "para")
    with pytest.raises(Exception):
        m.mode = "add"  # type: ignore[misc]
    with pytest.raises(ValueError):
        m.soundtrack[0] = 1.0
    with pytest.raises(ValueError):
        merge_speakers(np.zeros(10, np.float32), np.zeros(10, np.float32), "mix")  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_audio_track_of_video_container(tmp_path: Path):
    src = tmp_path / "src.wav"
    _write_tone(src, 1.0, sr=48000, channels=2)
    out = tmp_path / "clip.mp4"
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25:d=1",
         "-i", str(src), "-map", "0:v", "-map", "1:a", "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(out)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"ffmpeg cannot write mp4: {proc.stderr.strip()[:200]}")
    y = load_audio_16k(out)
    assert abs(duration_s(y) - 1.0) < 0.06


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_video_without_audio_raises(tmp_path: Path):
    out = tmp_path / "silent.mp4"
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25:d=1",
         "-c:v", "mpeg4", str(out)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"ffmpeg cannot write mp4: {proc.stderr.strip()[:200]}")
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        load_audio_16k(out)


def _flac_with_length(tmp_path: Path, x: np.ndarray, declared: int) -> Path:
    """`x` as FLAC whose STREAMINFO says `declared` samples (0: unknown, as a streamed FLAC says)."""
    p = tmp_path / f"declared{declared}.flac"
    sf.write(p, x, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    data = bytearray(p.read_bytes())
    word = int.from_bytes(data[18:26], "big")  # rate, channels, bits, then 36 bits of total samples
    data[18:26] = ((word & ~((1 << 36) - 1)) | declared).to_bytes(8, "big")
    p.write_bytes(bytes(data))
    return p


def test_a_flac_of_unknown_length_decodes_whole(tmp_path: Path):
    """Total samples 0 is legal FLAC; libsndfile then reports 2**63 frames, and reading that as one array was a
    ValueError ('array is too big') that reached the job as E_INTERNAL."""
    from worker.engine.audio_io import decode_audio

    x = np.random.default_rng(0).uniform(-0.3, 0.3, 5 * SAMPLE_RATE).astype(np.float32)
    data, sr = decode_audio(_flac_with_length(tmp_path, x, 0))
    reference, _ = sf.read(_flac_with_length(tmp_path, x, len(x)), dtype="float32")
    assert sr == SAMPLE_RATE and data.shape == (1, len(x))
    np.testing.assert_array_equal(data[0], reference)


@pytest.mark.parametrize("ext", ["flac", "ogg"])
def test_decoding_stops_at_the_byte_budget(tmp_path: Path, ext: str):
    """Whatever a header says (or does not), a file never decodes past max_bytes (both decoders)."""
    from worker.engine.audio_io import decode_audio

    p = tmp_path / f"long.{ext}"
    sf.write(p, np.zeros(4 * SAMPLE_RATE, np.float32) + 0.01, SAMPLE_RATE, format=ext.upper())
    assert decode_audio(p, max_bytes=4 * SAMPLE_RATE * 4 + 4096)[0].shape[1] >= 4 * SAMPLE_RATE - 2048
    with pytest.raises(AudioDecodeError, match="decodes to more than"):
        decode_audio(p, max_bytes=SAMPLE_RATE * 4)
    mp4 = tmp_path / "long.m4a"  # the PyAV path (libsndfile cannot read MP4)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(p), "-c:a", "aac", str(mp4)], check=True)
    with pytest.raises(AudioDecodeError, match="decodes to more than"):
        decode_audio(mp4, max_bytes=SAMPLE_RATE * 4)
