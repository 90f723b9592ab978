"""The job's preview through run_job on the tiny model: a job stopped after some chunks names a playable
partial MP4, a retried job (same id, chunk checkpoints) reuses the segments already stored, inline results
say the preview is unavailable, `preview: false` turns it off."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.worker.test_job import EXAMPLES, example, make_ctx
from tests.worker.test_segment import decode
from contract.errors import ErrorCode, JobError
from worker.job import run_job
from worker.media.mux import probe_mp4
from worker.preview.playlist import parse_playlist
from worker.preview.session import INLINE_REASON


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("session")
    wave, rate = sf.read(EXAMPLES / "media" / "speech_person1.wav", dtype="float32")
    sf.write(tmp / "long.wav", np.tile(wave, 4)[: 10 * rate], rate)  # 10 s: 4 chunks
    ctx = make_ctx(tmp, tmp / "cache", f"server.allowed_roots=[{tmp}]",
                   f"server.checkpoint_dir={tmp / 'ckpt'}")
    return ctx, tmp


def job(tmp: Path, **extra) -> dict:
    return example("streaming_long.json") | {"audio": str(tmp / "long.wav"), "seed": 11, **extra}


def preview_dir(tmp: Path, job_id: str) -> Path:
    return tmp / "outputs" / "infinitetalk" / job_id / "preview"


def test_stopped_job_names_a_playable_partial_and_a_retry_reuses_its_segments(env):
    ctx, tmp = env
    folder = preview_dir(tmp, "stop1")
    seen: list[dict] = []
    with pytest.raises(JobError) as err:
        run_job("stop1", job(tmp), ctx, seen.append, should_cancel=lambda: (folder / "seg-00001.ts").exists())
    e = err.value
    assert e.code is ErrorCode.E_CANCELLED
    partial = Path(e.details["partial_video_path"])
    probe = probe_mp4(partial)
    assert probe.faststart and probe.num_frames >= 2 * 72
    assert e.details["partial_duration_s"] == pytest.approx(probe.num_frames / 25, abs=0.05)
    pl = parse_playlist(Path(e.details["preview_path"]).read_text())
    assert pl.ended and len(pl.segments) >= 2  # closed: nothing more will come
    assert any((p.get("preview") or {}).get("segments") for p in seen)  # progress carried it
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("seg-*.ts")}

    # The same job again (Runpod's /retry): resumes after the checkpointed chunks, keeps their segments.
    out = run_job("stop1", job(tmp), ctx, lambda p: None)
    pl = parse_playlist((folder / "index.m3u8").read_text())
    assert pl.ended and len(pl.segments) == out["preview"]["segments"] == 4
    kept = [n for n, t in first.items() if (folder / n).stat().st_mtime_ns == t]
    assert len(kept) >= 2, "the resumed run encoded again the segments it could reuse"
    frames = np.concatenate([decode(folder / s.uri)[0] for s in pl.segments])
    final = decode(Path(out["video_path"]))[0]
    assert frames.shape == final.shape
    assert abs(frames - final).mean() < 3.0
    assert not partial.exists()  # the whole video replaced the partial one


def test_inline_results_say_the_preview_is_unavailable(env):
    ctx, tmp = env
    out = run_job("inl1", job(tmp, output={"target": "inline"}, max_duration_s=3.0), ctx, lambda p: None)
    assert out["preview"] == {"available": False, "reason": INLINE_REASON}
    assert "preview_url" not in out and out["video_base64"]


def test_preview_false_turns_it_off(env):
    ctx, tmp = env
    out = run_job("off1", job(tmp, preview=False, max_duration_s=3.0), ctx, lambda p: None)
    assert "preview" not in out
    assert not preview_dir(tmp, "off1").exists()


def test_timed_out_job_names_its_partial_video(env, tmp_path):
    """server.job_timeout_s (E_TIMEOUT) between sampling steps: the error names the MP4 made so far.

    The deadline is set from this machine's own speed (three times a warm one-chunk job), so the
    40 s job cannot finish inside it on a fast machine, and one chunk is done before it on a slow one."""
    import time

    ctx0, tmp = env
    wave, rate = sf.read(EXAMPLES / "media" / "speech_person1.wav", dtype="float32")
    sf.write(tmp / "very_long.wav", np.tile(wave, 12)[: 40 * rate], rate)  # 40 s: 14 chunks
    run_job("warm1", job(tmp, max_duration_s=3.0, preview=False), ctx0, lambda p: None)  # compile/warm caches
    start = time.perf_counter()
    run_job("warm2", job(tmp, max_duration_s=3.0, preview=False), ctx0, lambda p: None)
    one_chunk_s = time.perf_counter() - start
    deadline = round(max(3.0 * one_chunk_s, 1.0), 2)
    ctx = make_ctx(tmp_path, tmp / "cache", f"server.allowed_roots=[{tmp}]", f"server.job_timeout_s={deadline}")
    ctx.engine.get()  # warm: the deadline is spent on sampling
    with pytest.raises(JobError) as err:
        run_job("late1", job(tmp, audio=str(tmp / "very_long.wav")), ctx, lambda p: None)
    e = err.value
    assert e.code is ErrorCode.E_TIMEOUT and e.details["job_timeout_s"] == deadline
    probe = probe_mp4(Path(e.details["partial_video_path"]))
    assert probe.faststart and probe.num_frames >= 81 and probe.duration_s < 40


@pytest.mark.parametrize("events", [None, [], ["done"]])
def test_a_private_webhook_url_is_refused_with_or_without_events(env, events):
    ctx, tmp = env
    extra = {"webhook_url": "http://10.1.2.3/hook", "max_duration_s": 3.0}
    if events is not None:
        extra["webhook_events"] = events
    with pytest.raises(JobError) as err:
        run_job(f"hook{len(events or ())}{events is None}", job(tmp, **extra), ctx, lambda p: None)
    assert err.value.code is ErrorCode.E_INPUT_VALIDATION and err.value.details["field"] == "webhook_url"
