"""worker/media/audio.py: the job's tracks are cut to the video's length, and the cut is reported."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configuration import compose_config
from contract.choices import AUDIO_SAMPLE_RATE, VIDEO_FPS
from contract.errors import ErrorCode, JobError
from contract.job import parse_job_input
from worker.media.audio import cut_to_video, synthesized_tracks, uploaded_tracks
from worker.progress import ProgressReporter, Stage
from worker.resolve import apply_job_overrides

CFG = compose_config(env={})


def resolved(**fields):
    job = parse_job_input({"image": "/runpod-volume/a.png", "audio": "/runpod-volume/a.wav", "seed": 1, **fields})
    return apply_job_overrides(CFG, job)


@settings(max_examples=40, deadline=None)
@given(seconds=st.floats(0.1, 20.0), limit_s=st.integers(1, 12), two=st.booleans())
def test_streaming_cut_to_max_duration(seconds, limit_s, two):
    n = int(seconds * AUDIO_SAMPLE_RATE)
    track = np.linspace(-1, 1, n, dtype=np.float32)
    tracks = (track, track * 0.5) if two else (track,)
    got, soundtrack, dropped = cut_to_video(tracks, track, resolved(mode="streaming", max_duration_s=limit_s))
    limit = limit_s * AUDIO_SAMPLE_RATE
    assert len(soundtrack) == min(n, limit) and all(len(t) == len(soundtrack) for t in got)
    assert dropped == pytest.approx(max(0, n - limit) / AUDIO_SAMPLE_RATE)
    assert np.array_equal(soundtrack, track[: len(soundtrack)])


def test_clip_mode_keeps_one_chunk_of_audio():
    r = resolved(mode="clip", frame_num=33)
    track = np.ones(5 * AUDIO_SAMPLE_RATE, dtype=np.float32)
    _, soundtrack, dropped = cut_to_video((track,), track, r)
    assert len(soundtrack) == 33 * AUDIO_SAMPLE_RATE // VIDEO_FPS
    assert dropped == pytest.approx(5 - 33 / VIDEO_FPS)


def test_too_short_audio_is_refused_with_its_code():
    track = np.ones(AUDIO_SAMPLE_RATE // VIDEO_FPS, dtype=np.float32)  # one frame: under two
    with pytest.raises(JobError) as ei:
        cut_to_video((track,), track, resolved())
    assert ei.value.code is ErrorCode.E_AUDIO_EMBEDDING and "too short" in ei.value.message
    assert ei.value.message.startswith("tts.text: ") and ei.value.details == {"field": "tts.text"}


@pytest.mark.parametrize("bad,words", [("nan", "NaN"), ("short", "too short"), ("garbage", "decode")])
def test_an_undecodable_upload_names_its_field_not_the_workers_path(tmp_path, bad, words):
    """Speaker 2's broken file: E_AUDIO_EMBEDDING naming audio.person2, without the worker's copy's path."""
    import soundfile as sf

    good = tmp_path / "p1.wav"
    sf.write(good, np.full(AUDIO_SAMPLE_RATE, 0.1, np.float32), AUDIO_SAMPLE_RATE)
    broken = tmp_path / "p2.flac"
    if bad == "nan":
        sf.write(broken, np.full(AUDIO_SAMPLE_RATE, np.nan, np.float32), AUDIO_SAMPLE_RATE, format="WAV", subtype="FLOAT")
    elif bad == "short":
        sf.write(broken, np.zeros(3, np.float32), AUDIO_SAMPLE_RATE, format="WAV")
    else:
        noise = np.random.default_rng(0).uniform(-0.5, 0.5, AUDIO_SAMPLE_RATE).astype(np.float32)
        sf.write(broken, noise, AUDIO_SAMPLE_RATE, format="FLAC")
        data = broken.read_bytes()
        broken.write_bytes(data[: len(data) // 3] + b"\x00" * 100)
    r = resolved(audio={"person1": "/runpod-volume/a.wav", "person2": "/runpod-volume/b.wav"}, audio_type="para")
    with pytest.raises(JobError) as ei:
        uploaded_tracks(r, {"audio.person1": good, "audio.person2": broken})
    err = ei.value
    assert err.code is ErrorCode.E_AUDIO_EMBEDDING and err.details == {"field": "audio.person2"}
    assert err.message.startswith("audio.person2: ") and words in err.message and "audio.person2" in err.hint
    assert str(tmp_path) not in err.message + err.hint


@pytest.fixture(scope="module")
def short_chunk_tts(tmp_path_factory):
    """The tiny Kokoro with 20-token chunks: a short dialogue (cheap on the CPU) spans several."""
    from testkit.tiny import ensure_tiny_kokoro
    from worker.engine.models.tts import KokoroTTS

    tts = KokoroTTS.from_folder(ensure_tiny_kokoro(tmp_path_factory.mktemp("kokoro")), device="cpu")
    tts.max_tokens = 20
    return tts


def reporter() -> ProgressReporter:
    progress = ProgressReporter(lambda _: None)
    progress.stage(Stage.AUDIO)
    return progress


def tts_resolved(text: str, **fields):
    job = parse_job_input({"image": "/runpod-volume/a.png", "tts": {"text": text}, "seed": 3, **fields})
    return job, apply_job_overrides(CFG, job)


def test_speech_past_the_video_is_not_synthesised_but_its_cut_is_reported(short_chunk_tts):
    """A dialogue far longer than a 1 s video: the vocoder stops once the video's second is spoken (the later turns
    are only phonemised), and the cut the result reports estimates the unspoken rest at the spoken pace."""
    text = "(s1) Good morning to you. How was the trip? (s2) Long, but fine. We are glad to be here at last."
    job, full_r = tts_resolved(text)
    (one, two), full, unspoken = synthesized_tracks(job, full_r, short_chunk_tts, reporter())
    assert unspoken == 0 and len(full) > 4 * AUDIO_SAMPLE_RATE and np.any(two)
    job, short_r = tts_resolved(text, max_duration_s=1.0)
    got, soundtrack, unspoken = synthesized_tracks(job, short_r, short_chunk_tts, reporter())
    assert AUDIO_SAMPLE_RATE <= len(soundtrack) < len(full) / 2 and unspoken > 0
    assert not np.any(got[1])  # the second speaker's turn was never reached
    _, cut, dropped = cut_to_video(got, soundtrack, short_r)
    assert len(cut) == AUDIO_SAMPLE_RATE
    total_s = len(full) / AUDIO_SAMPLE_RATE
    assert dropped + unspoken == pytest.approx(total_s - 1.0, rel=0.5)

