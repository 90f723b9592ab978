"""Watching a job while it renders, through the real stack: the local endpoint runs the tiny model,
results go to moto_server's S3, segments are fetched by their presigned URLs and decoded with PyAV.

The speech is the example's, repeated to ~12 s, so the job has several chunks and the test can see
segments appear while /status still says IN_PROGRESS.
"""
from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.worker.conftest import TEST_ACCESS_KEY
from tests.worker.test_e2e_endpoint import data_uri
from tests.processes import handler_server
from worker.media.mux import probe_mp4
from worker.preview.playlist import parse_playlist

REPO = Path(__file__).resolve().parents[2]
MEDIA = REPO / "examples" / "media"
BUCKET = "previews"
SECRET_KEY = "preview-secret-5b1e"
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


class Receiver:
    """A webhook receiver on loopback collecting the JSON bodies posted to it."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, moto_server):
    tmp = tmp_path_factory.mktemp("preview")
    moto_server.client().create_bucket(Bucket=BUCKET)
    env = {
        "INFINITETALK_OVERRIDES": json.dumps([
            f"server.cache_dir={tmp / 'cache'}", f"server.work_dir={tmp / 'work'}",
            "server.allow_loopback_hosts=[127.0.0.1]",
        ]),
        "S3_ENDPOINT": moto_server.endpoint, "S3_BUCKET": BUCKET, "S3_ACCESS_KEY": TEST_ACCESS_KEY,
        "S3_SECRET_KEY": SECRET_KEY, "S3_REGION": "us-east-1",
    }
    srv = handler_server(env, tmp)
    yield srv, tmp
    srv.stop()


def long_speech(seconds: float) -> str:
    wave, rate = sf.read(MEDIA / "speech_person1.wav", dtype="float32")
    wave = wave if wave.ndim == 1 else wave.mean(axis=1)
    reps = int(np.ceil(seconds * rate / len(wave)))
    buf = io.BytesIO()
    sf.write(buf, np.tile(wave, reps)[: int(seconds * rate)], rate, format="WAV")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


def payload(**extra) -> dict:
    return {"image": data_uri(MEDIA / "portrait.png"), "audio": long_speech(12.0), "mode": "streaming",
            "sampler": "turbo", "seed": 7, "output": {"target": "s3", "key_prefix": "watch"}, **extra}


def frames_of(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)


def segments_of(playlist_url: str):
    pl = parse_playlist(httpx.get(playlist_url, timeout=10).text)
    return pl, [httpx.get(s.uri, timeout=10).content for s in pl.segments]


def test_segments_while_in_progress_equal_the_final_video(stack):
    srv, _ = stack
    hook = Receiver()
    job = srv.endpoint().run(payload(webhook_url=hook.url, webhook_events=["segment", "done"]))
    early: list[tuple[int, np.ndarray]] = []
    deadline = time.monotonic() + 240
    while (st := job._fetch_job())["status"] not in FINAL:
        prev = (st.get("output") or {}).get("preview") if st["status"] == "IN_PROGRESS" else None
        if prev and prev.get("segments") and not early:
            pl, segs = segments_of(prev["playlist_url"])  # fetched while the job still runs
            assert not pl.ended and len(pl.segments) >= 1
            early = [(len(pl.segments), frames_of(segs[0]))]
            still = job._fetch_job()["status"]
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    assert st["status"] == "COMPLETED", st
    assert early, "no segment was visible while the job was IN_PROGRESS"
    assert still == "IN_PROGRESS"
    out = st["output"]
    assert out["preview"]["ended"] and out["preview_url"] == out["preview"]["playlist_url"]
    assert "partial_url" not in out["preview"]  # the whole video replaced the partial one
    pl, segs = segments_of(out["preview_url"])
    assert pl.ended and len(pl.segments) == out["preview"]["segments"] >= 4
    assert all(s.uri.startswith("http") and "X-Amz-Signature" in s.uri for s in pl.segments)  # presigned each
    decoded = [frames_of(b) for b in segs]  # every segment decodes on its own
    assert [d.shape[0] for d in decoded] == [round(s.duration_s * 25) for s in pl.segments]
    final_bytes = httpx.get(out["video_url"], timeout=30).content
    final = frames_of(final_bytes)
    joined = np.concatenate(decoded)
    assert joined.shape == final.shape and final.shape[0] == out["num_frames"]
    diff = abs(joined - final)
    # The same frames through two lossy H.264 encodes with different GOPs (a keyframe per segment
    # against x264's own choice): the tiny model's noisy 32x48 frames come out ~2 levels apart (test_job.py's
    # same-seed tolerance, 0.5, is for two identical encodes); a frame off by one is ~60 levels apart.
    assert diff.mean() < 3.0 and (diff > 24).mean() < 0.01, (diff.mean(), (diff > 24).mean())
    shifted = abs(joined[1:] - final[:-1]).mean()
    assert diff.mean() < 0.1 * shifted, (diff.mean(), shifted)
    assert np.array_equal(early[0][1], decoded[0])  # the early segment is the one that stayed
    assert SECRET_KEY not in json.dumps(out)
    # per-segment webhook events through the guard, then "done" with the result
    for _ in range(100):
        if any(b["event"] == "done" for b in hook.bodies):
            break
        time.sleep(0.05)
    kinds = [b["event"] for b in hook.bodies]
    assert kinds == ["segment"] * len(pl.segments) + ["done"], kinds
    assert [b["segment"] for b in hook.bodies[:-1]] == list(range(len(pl.segments)))
    assert hook.bodies[-1]["output"]["video_url"] == out["video_url"]


def test_cancelled_job_leaves_a_playable_partial_mp4(stack):
    srv, tmp = stack
    job = srv.endpoint().run(payload(audio=long_speech(30.0), seed=8))
    deadline = time.monotonic() + 240
    prev: dict = {}
    while True:
        st = job._fetch_job()
        assert st["status"] == "IN_PROGRESS" or st["status"] == "IN_QUEUE", st
        prev = (st.get("output") or {}).get("preview") or {}
        if prev.get("segments", 0) >= 2 and prev.get("partial_url"):
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    job.cancel()
    assert job._fetch_job()["status"] == "CANCELLED"
    data = httpx.get(prev["partial_url"], timeout=30).content
    path = tmp / "partial.mp4"
    path.write_bytes(data)
    probe = probe_mp4(path)
    assert probe.faststart and (probe.video_codec, probe.audio_codec) == ("h264", "aac")
    frames = frames_of(data)
    assert frames.shape[0] == probe.num_frames >= 72 * 2  # at least the two segments seen
    assert abs(frames.shape[0] / 25 - probe.duration_s) < 0.1
    pl, segs = segments_of(prev["playlist_url"])  # the playlist stays, without ENDLIST
    assert not pl.ended and len(pl.segments) >= 2
    first = frames_of(segs[0])
    assert np.array_equal(frames[: first.shape[0]], first)  # the partial MP4 is the segments, copied
