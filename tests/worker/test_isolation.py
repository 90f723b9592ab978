"""audio_isolation / audio_mux on the tiny model: the separated voice (not the mix) is the track the engine's
wav2vec2 gets, the MP4 carries the track audio_mux names, and every failure has its code."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from configuration import compose_config
from contract.errors import ErrorCode, JobError
from testkit.tiny import ensure_tiny_isolation, isolation_test_signal
from worker.engine import VoiceIsolator
from worker.engine.audio_io import decode_audio, mono_16k, prepare_audio
from worker.job import JobContext, _JobRun, run_job
from worker.media.audio import isolated_voice

REPO = Path(__file__).resolve().parents[2]
PORTRAIT = REPO / "examples" / "media" / "portrait.png"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("iso")
    # a 2 s stereo 44.1 kHz "song": a voice-like tone over a bass line and a bright chord (testkit formula)
    soundfile.write(root / "song.wav", isolation_test_signal(2 * 44100).numpy().T, 44100, subtype="FLOAT")
    return root


def make_ctx(root: Path, *overrides: str) -> JobContext:
    cfg = compose_config([f"server.cache_dir={root / 'cache'}", f"server.work_dir={root / 'work'}",
                          f"storage.local.root={root / 'outputs'}", *overrides])
    return JobContext.create(cfg, extra_roots=[root, REPO / "examples"])


@pytest.fixture(scope="module")
def ctx(folder) -> JobContext:
    return make_ctx(folder)


def payload(folder: Path, **fields) -> dict:
    return {"image": str(PORTRAIT), "audio": str(folder / "song.wav"), "mode": "clip", "frame_num": 13, "seed": 7,
            "output": {"target": "local"}, **fields}


def run_stages(ctx: JobContext, job: dict, job_id: str):
    """The job's real stages, keeping the run so that the engine request it built can be read."""
    seen: list[dict] = []
    work = Path(tempfile.mkdtemp(dir=ctx.cfg.server.work_dir if Path(ctx.cfg.server.work_dir).is_dir() else None))
    run = _JobRun(job_id, job, ctx, seen.append, work, None)
    return run, run.run(), seen


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 400) -> float:
    """The highest normalised correlation of a and b over lags up to max_lag samples (codec delay)."""
    n = min(len(a), len(b)) - max_lag
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x = a[max(0, lag) : max(0, lag) + n]
        y = b[max(0, -lag) : max(0, -lag) + n]
        best = max(best, float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12)))
    return best


def mp4_audio_16k(path: str) -> np.ndarray:
    data, sr = decode_audio(path)  # PyAV decodes the MP4's AAC
    return mono_16k(data, sr)


@pytest.fixture(scope="module")
def voice(folder, ctx) -> np.ndarray:
    """What the worker should feed wav2vec2: the tiny isolator's vocals of the file, as a 16 kHz track."""
    original = prepare_audio(folder / "song.wav")
    iso = ctx.engine.isolator()
    return isolated_voice(iso, folder / "song.wav", len(original))


def test_the_separated_voice_reaches_the_engine_and_the_mix_is_muxed(ctx, folder, voice):
    original = prepare_audio(folder / "song.wav")
    run, out, seen = run_stages(ctx, payload(folder, audio_isolation=True), "iso-original")
    (track,) = run.request.audio_tracks  # what the engine's wav2vec2 embeds (EngineRequest.audio_tracks)
    assert np.array_equal(track, voice[: len(track)])
    assert not np.allclose(track, original[: len(track)], atol=1e-3)  # not the mix
    assert any(p.get("message", "").startswith("isolating voice") for p in seen)
    assert out["config"]["audio_isolation"] is True and out["config"]["audio_mux"] == "original"
    muxed = mp4_audio_16k(out["video_path"])
    with_mix, with_voice = best_correlation(muxed, original), best_correlation(muxed, voice)
    assert with_mix > 0.95 and with_mix > with_voice + 0.2, (with_mix, with_voice)

    run_v, out_v, _ = run_stages(ctx, payload(folder, audio_isolation=True, audio_mux="voice"), "iso-voice")
    assert np.array_equal(run_v.request.audio_tracks[0], track)  # the same track drives the video
    muxed_v = mp4_audio_16k(out_v["video_path"])
    with_mix, with_voice = best_correlation(muxed_v, original), best_correlation(muxed_v, voice)
    assert with_voice > 0.95 and with_voice > with_mix + 0.2, (with_mix, with_voice)


def test_isolation_changes_what_drives_the_video_and_only_that(ctx, folder):
    plain, out_plain, seen = run_stages(ctx, payload(folder), "plain")
    iso, out_iso, _ = run_stages(ctx, payload(folder, audio_isolation=True), "iso")
    assert not any(p.get("message", "").startswith("isolating voice") for p in seen)
    assert np.array_equal(plain.request.audio_tracks[0], prepare_audio(folder / "song.wav")[: len(plain.soundtrack)])
    assert np.array_equal(plain.soundtrack, iso.soundtrack)  # the muxed mix is the same either way
    assert not np.array_equal(plain.request.audio_tracks[0], iso.request.audio_tracks[0])
    frames = [np.stack([f.to_ndarray(format="rgb24") for f in _frames(o["video_path"])]) for o in (out_plain, out_iso)]
    assert frames[0].shape == frames[1].shape and not np.array_equal(frames[0], frames[1])


def _frames(path: str):
    import av

    with av.open(path) as c:
        yield from c.decode(video=0)


def test_two_speakers_each_get_their_own_isolated_track(ctx, folder, voice):
    speech = REPO / "examples" / "media" / "speech_person2.wav"
    job = payload(folder, audio={"person1": str(folder / "song.wav"), "person2": str(speech)}, audio_type="para",
                  audio_isolation=True, image=str(REPO / "examples" / "media" / "two_people.png"))
    run, _, _ = run_stages(ctx, job, "iso-two")
    one, two = run.request.audio_tracks
    n = len(one)
    assert np.array_equal(one, voice[:n])
    other = isolated_voice(ctx.engine.isolator(), speech, len(prepare_audio(speech)))
    assert np.array_equal(two, other[:n])


def test_a_worker_without_isolation_weights_refuses_the_field(folder):
    bare = make_ctx(folder, "model.isolation_path=null")
    with pytest.raises(JobError) as info:
        run_job("no-weights", payload(folder, audio_isolation=True), bare, lambda p: None)
    assert info.value.code is ErrorCode.E_INPUT_VALIDATION and "audio_isolation" in info.value.message


def test_a_missing_weights_file_is_a_load_error_naming_it(folder, tmp_path):
    missing = tmp_path / "elsewhere" / "htdemucs.safetensors"  # the tiny writer fills <root>/htdemucs/ only
    broken = make_ctx(folder, f"model.isolation_path={missing}")
    with pytest.raises(JobError) as info:
        run_job("missing-weights", payload(folder, audio_isolation=True), broken, lambda p: None)
    assert info.value.code is ErrorCode.E_PIPELINE_LOAD and str(missing) in info.value.message


def test_the_isolator_is_loaded_once_per_worker(ctx):
    assert ctx.engine.isolator() is ctx.engine.isolator()
    assert isinstance(ctx.engine.isolator(), VoiceIsolator)


def test_tiny_weights_are_written_where_the_tiny_config_points(ctx):
    path = Path(ctx.cfg.model.isolation_path)
    assert ensure_tiny_isolation(path.parent.parent) == path and path.is_file()
