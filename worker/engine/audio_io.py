"""Audio preparation for InfiniteTalk: decode, mono, 16 kHz, loudness, two-speaker merge.

Numerics follow the reference pipeline so the wav2vec2 features match it:

* decoding + resampling reproduce ``librosa.load(path, sr=16000)``: libsndfile decodes to
  float32, channels are averaged, and librosa's default resampler (soxr "HQ") converts the
  rate, with librosa's output length ``ceil(n * 16000 / sr)``. Files libsndfile cannot open
  (m4a/aac, video containers, ...) are decoded by PyAV to float32 instead and then go through
  the very same mono + soxr path, so only the codec's own decoder differs. (For video containers
  the reference shells out to ffmpeg for a 16 kHz s16 stereo wav first; we skip that detour, so
  mp4/mov audio differs from it by ffmpeg's resampler and 16-bit rounding, well below what the
  model can notice.)
* loudness normalisation uses pyloudnorm's BS.1770-4 meter. The reference ran under numpy<2,
  where ``float64_scalar * float32_array`` stays float32 (the gain is rounded to float32 first);
  numpy 2 would promote to float64. We apply the gain as a float32 scalar explicitly so the
  result is bit-identical to the reference under either numpy.
* every array leaving this module is float32. The reference's two-speaker "add" tracks are
  float64 only because they were concatenated with float64 zeros; their values are float32
  values (padding with zeros and adding zero are exact), so float32 loses nothing there. For
  "para" the float32 sum differs from a float64 sum by at most one float32 rounding (~6e-8).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from contract.choices import AUDIO_SAMPLE_RATE as SAMPLE_RATE
from contract.choices import MAX_AUDIO_DECODED_BYTES, VIDEO_FPS

from worker.engine.errors import AudioDecodeError

# One video frame of audio: below this the embedding would have zero frames (and wav2vec2's
# 400-sample receptive field would not fit), so such input is rejected rather than padded.
MIN_SAMPLES = SAMPLE_RATE // VIDEO_FPS
LOUDNESS_TARGET_LUFS = -23.0

MergeMode = Literal["add", "para"]


@dataclass(frozen=True)
class MergedAudio:
    """Per-speaker conditioning tracks plus the soundtrack that gets muxed into the video.

    ``person1``/``person2`` are what each speaker's wav2vec2 embedding is computed from; both have
    the same length as ``soundtrack`` (their sum). All float32 at ``sample_rate``.
    """

    person1: np.ndarray
    person2: np.ndarray
    soundtrack: np.ndarray
    mode: MergeMode
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return duration_s(self.soundtrack, self.sample_rate)


def duration_s(audio: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Length in seconds of a mono waveform."""
    return float(np.asarray(audio).shape[-1]) / float(sr)


def video_frames_for(audio: np.ndarray, sr: int = SAMPLE_RATE, fps: int = VIDEO_FPS) -> int:
    """Number of video frames the reference derives from an audio length (truncating, 25 fps)."""
    return int(np.asarray(audio).shape[-1] / sr * fps)


# MAX_AUDIO_DECODED_BYTES: the guard refuses larger declarations before decoding (worker/inputs/media_guard.py);
# the decoders below stop there for files whose header does not say (a streamed FLAC's length is 0).
_BLOCK_FRAMES = 1 << 20


def _over_budget(path: Path, nbytes: int, max_bytes: int) -> AudioDecodeError:
    return AudioDecodeError(f"audio decodes to more than {max_bytes // 2**20} MiB (at least {nbytes // 2**20} MiB); "
                            "send shorter, mono or lower-rate audio", str(path))


def _decode_soundfile(path: Path, max_bytes: int = MAX_AUDIO_DECODED_BYTES) -> tuple[np.ndarray, int] | None:
    """float32 [channels, n] via libsndfile, or None when libsndfile does not know the format. Read in blocks
    to the end, not as one array of the header's frame count: an unknown length reads as 2**63 frames."""
    import soundfile as sf

    blocks: list[np.ndarray] = []
    nbytes = 0
    try:
        with sf.SoundFile(str(path)) as f:
            sr, channels = int(f.samplerate), int(f.channels)
            while True:
                block = f.read(frames=_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                blocks.append(block)
                nbytes += block.nbytes
                if nbytes > max_bytes:
                    raise _over_budget(path, nbytes, max_bytes)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    data = np.concatenate(blocks) if blocks else np.zeros((0, max(channels, 1)), np.float32)
    return np.ascontiguousarray(data.T), sr


def _decode_pyav(path: Path, max_bytes: int = MAX_AUDIO_DECODED_BYTES) -> tuple[np.ndarray, int]:
    """float32 [channels, n] via PyAV/ffmpeg, for containers and codecs libsndfile lacks."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a worker dependency
        raise AudioDecodeError("cannot decode this audio format: PyAV is not installed", str(path)) from exc

    chunks: list[np.ndarray] = []
    sr: int | None = None
    try:
        with av.open(str(path)) as container:
            streams = [s for s in container.streams if s.type == "audio"]
            if not streams:
                raise AudioDecodeError("file has no audio stream", str(path))
            stream = streams[0]
            # Planar float keeps the source layout and rate; mono/resampling are done below
            # exactly as for libsndfile input.
            resampler = av.AudioResampler(format="fltp")
            nbytes = 0
            for frame in container.decode(stream):
                sr = sr or int(frame.sample_rate)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    nbytes += chunks[-1].nbytes
                if nbytes > max_bytes:
                    raise _over_budget(path, nbytes, max_bytes)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except AudioDecodeError:
        raise
    except Exception as exc:  # PyAV raises a family of FFmpegError/ValueError subclasses
        raise AudioDecodeError(f"cannot decode audio: {exc}", str(path)) from exc
    if not chunks or sr is None:
        raise AudioDecodeError("file contains no audio samples", str(path))
    data = np.concatenate(chunks, axis=-1).astype(np.float32, copy=False)
    return data, sr


def resample_to_16k(mono: np.ndarray, sr: int) -> np.ndarray:
    """soxr-HQ resampling with librosa's length rule; identity when already at 16 kHz."""
    import librosa

    y = np.asarray(mono, dtype=np.float32)
    if sr == SAMPLE_RATE:
        return y
    out = librosa.resample(y, orig_sr=sr, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return np.asarray(out, dtype=np.float32)


def decode_audio(path: str | Path, max_bytes: int = MAX_AUDIO_DECODED_BYTES) -> tuple[np.ndarray, int]:
    """Decode any common audio file as it is: float32 [channels, n] at the file's own rate.

    Raises AudioDecodeError for missing, corrupt, empty or non-finite audio, or audio that decodes to more
    than `max_bytes`."""
    p = Path(path)
    if not p.is_file():
        raise AudioDecodeError("audio file not found", str(p))
    if p.stat().st_size == 0:
        raise AudioDecodeError("audio file is empty (0 bytes)", str(p))

    decoded = _decode_soundfile(p, max_bytes)
    data, sr = decoded if decoded is not None else _decode_pyav(p, max_bytes)
    if data.ndim != 2 or data.shape[-1] == 0:
        raise AudioDecodeError("file contains no audio samples", str(p))
    if sr <= 0:
        raise AudioDecodeError(f"invalid sample rate {sr}", str(p))
    if not np.all(np.isfinite(data)):
        raise AudioDecodeError("audio contains NaN or infinite samples", str(p))
    return data, sr


def mono_16k(data: np.ndarray, sr: int) -> np.ndarray:
    """[channels, n] (or [n]) at `sr` -> mono float32 at 16 kHz: the channel average (as librosa's to_mono),
    then `resample_to_16k`."""
    x = np.asarray(data, dtype=np.float32)
    mono = x if x.ndim == 1 else (x[0] if x.shape[0] == 1 else np.mean(x, axis=0))
    return resample_to_16k(mono, sr)


def load_audio_16k(path: str | Path) -> np.ndarray:
    """Decode any common audio file to a mono float32 waveform at 16 kHz (no loudness change).

    Raises AudioDecodeError for missing, corrupt, empty, non-finite or too-short audio.
    """
    data, sr = decode_audio(path)
    y = mono_16k(data, sr)
    if not np.all(np.isfinite(y)):
        raise AudioDecodeError("audio contains NaN or infinite samples", str(path))
    if y.shape[0] < MIN_SAMPLES:
        raise AudioDecodeError(
            f"audio too short: {y.shape[0] / SAMPLE_RATE * 1000:.1f} ms, need at least "
            f"{MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms (one video frame)",
            str(path),
        )
    return y


def loudness_normalize(x: np.ndarray, sr: int = SAMPLE_RATE, target: float = LOUDNESS_TARGET_LUFS) -> np.ndarray:
    """Scale to ``target`` LUFS (integrated, BS.1770-4); float32 in, float32 out.

    Left unchanged when the measured loudness is implausible (|L| > 100, e.g. -inf for silence),
    as the reference does, and also when the clip is shorter than the meter's 400 ms block,
    where the reference would fail outright; a short clip is still usable for conditioning.
    """
    import pyloudnorm as pyln

    y = np.asarray(x, dtype=np.float32)
    meter = pyln.Meter(sr)
    if y.shape[-1] < meter.block_size * sr:
        return y.copy()
    loudness = meter.integrated_loudness(y)
    if not math.isfinite(loudness) or abs(loudness) > 100:
        return y.copy()
    gain = np.float32(np.power(10.0, (target - loudness) / 20.0))
    return (y * gain).astype(np.float32, copy=False)


def fit_peak(x: np.ndarray) -> np.ndarray:
    """`x` scaled down to a peak of 1 when it passes full scale, unchanged (the same array) otherwise: one uniform
    gain keeps the waveform, where clipping (as AAC does past 1) distorts it."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 1.0:
        return x
    return (x / np.float32(peak)).astype(np.float32, copy=False)


def prepare_audio(path: str | Path) -> np.ndarray:
    """Decode + resample + loudness-normalise one speaker's file (what each person's embedding uses).

    A float file whose samples pass full scale (e.g. +-1e6 from a tool that never normalised) is first brought to a
    peak of 1: its loudness would read as implausible (> 100 LUFS) and be left as is, so the model would hear it at
    another level than every other upload. Files within full scale are untouched, as the reference does them."""
    return loudness_normalize(fit_peak(load_audio_16k(path)))


def merge_speakers(a1: np.ndarray, a2: np.ndarray, mode: MergeMode) -> MergedAudio:
    """Lay out two prepared speaker tracks on one timeline.

    ``add``: person 1 speaks first, then person 2 (each track is zero where the other speaks);
    ``para``: both speak at once, the shorter track is zero-padded at the end to the longer one.
    """
    x1 = np.asarray(a1, dtype=np.float32).reshape(-1)
    x2 = np.asarray(a2, dtype=np.float32).reshape(-1)
    n1, n2 = x1.shape[0], x2.shape[0]
    if mode == "add":
        p1 = np.concatenate([x1, np.zeros(n2, dtype=np.float32)])
        p2 = np.concatenate([np.zeros(n1, dtype=np.float32), x2])
    elif mode == "para":
        n = max(n1, n2)
        p1 = np.zeros(n, dtype=np.float32)
        p2 = np.zeros(n, dtype=np.float32)
        p1[:n1] = x1
        p2[:n2] = x2
    else:
        raise ValueError(f"unknown speaker merge mode {mode!r}; expected 'add' or 'para'")
    soundtrack = (p1 + p2).astype(np.float32, copy=False)
    for arr in (p1, p2, soundtrack):
        arr.setflags(write=False)
    return MergedAudio(person1=p1, person2=p2, soundtrack=soundtrack, mode=mode)
