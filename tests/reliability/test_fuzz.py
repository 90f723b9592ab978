"""Property-based fuzzing of the job schema and the media parsers.

Every generated payload or corrupted file must end in a result or a `JobError` with an `E_`
code that is not E_INTERNAL (E_INTERNAL is what an unexpected exception becomes), and within
its deadline. A SIGALRM timer turns a hang into a failure instead of a stuck suite.

Profiles: `HYPOTHESIS_PROFILE=reliability-long` multiplies the example counts by ten.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import string
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import MEDIA
from contract.errors import ErrorCode, JobError

SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "reliability-long" else 1
FAST_EXAMPLES = 2000 * SCALE
JOB_EXAMPLES = 400 * SCALE
MEDIA_EXAMPLES = 300 * SCALE

COMMON = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


@contextlib.contextmanager
def hard_deadline(seconds: float):
    """Fail (not hang) when one example runs past `seconds`."""

    def boom(signum, frame):
        raise TimeoutError(f"example ran past its {seconds} s deadline")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_coded(exc: BaseException) -> JobError:
    assert isinstance(exc, JobError), f"unhandled {type(exc).__name__}: {exc}"
    assert exc.code is not ErrorCode.E_INTERNAL, exc.to_error_string()
    doc = json.loads(exc.to_error_string())
    assert doc["code"].startswith("E_") and doc["message"] and doc["hint"]
    return exc


# ----------------------------------------------------------------------------- payload strategies

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["", " ", "\x00", "../../etc/passwd", "4n+1", "e" * 5000]),
)
json_values = st.recursive(
    json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=12), kids, max_size=5)),
    max_leaves=20,
)

FIELDS = [
    "image", "cond_image", "video", "cond_video", "audio", "cond_audio", "audio_type", "tts", "tts_audio", "prompt",
    "negative_prompt", "n_prompt", "bbox", "size", "mode", "sampler", "preset", "sample_steps", "sample_shift",
    "text_guide_scale", "sample_text_guide_scale", "audio_guide_scale", "use_apg", "use_teacache", "teacache_thresh",
    "guidance_every", "frame_num", "motion_frame", "max_duration_s", "max_duration", "color_correction_strength", "seed",
    "base_seed", "output", "unknown_field",
]

# Refs that never reach the network: private literals, other schemes, paths in and out of the root.
REFS = st.one_of(
    st.sampled_from([
        "https://10.0.0.1/a.png", "https://[::1]/a.wav", "https://169.254.169.254/latest", "https://[::ffff:127.0.0.1]/x",
        "https://0x7f000001/x", "https://2130706433/x", "https://017700000001/x", "https://localhost/x",
        "https://metadata.google.internal/x", "http://10.1.1.1/x", "file:///etc/passwd", "ftp://x/y", "gopher://x",
        "s3://bucket/key", "s3://Bad_Bucket/key", "/etc/passwd", "/nonexistent/a.png", "relative.png", "C:\\x.png",
        "data:image/png;base64,iVBORw0KGgo=", "data:audio/wav;base64,UklGRg==", "data:,", "data:text/plain,hi",
        "data:image/png;base64,!!!!", "https://user:pw@10.0.0.1/a.png", "https://[fe80::1%25eth0]/x",
        "https://host:99999/x", "https:///nohost", str(MEDIA / "nope.png"), str(MEDIA / ".." / ".." / "etc"),
    ]),
    st.text(max_size=60),
)


def field_value(name: str) -> st.SearchStrategy[Any]:
    if name in ("image", "cond_image", "video", "cond_video"):
        return st.one_of(REFS, json_values)
    if name in ("audio", "cond_audio"):
        return st.one_of(REFS, st.fixed_dictionaries({"person1": REFS}, optional={"person2": REFS}), json_values)
    if name in ("frame_num", "motion_frame", "sample_steps", "seed", "base_seed"):
        return st.one_of(st.integers(-10, 300), st.integers(), json_values)
    if name in ("bbox",):
        box = st.lists(st.floats(-10, 5000, allow_nan=False), min_size=0, max_size=6)
        return st.one_of(st.dictionaries(st.sampled_from(["person1", "person2", "person3"]), box, max_size=3), json_values)
    if name in ("output",):
        return st.one_of(
            st.fixed_dictionaries({}, optional={
                "target": st.sampled_from(["s3", "volume", "local", "inline", "ftp", ""]),
                "key_prefix": st.one_of(st.text(max_size=20), st.sampled_from(["../x", "/abs", "a/./b", "ok/"])),
                "presign_expiry_s": st.integers(-5, 10**7),
            }),
            json_values,
        )
    if name in ("tts", "tts_audio"):
        return st.one_of(st.fixed_dictionaries({"text": st.text(max_size=30)}, optional={"voice2": REFS}), json_values)
    if name in ("size", "mode", "sampler", "preset", "audio_type"):
        return st.one_of(st.sampled_from(["infinitetalk-480", "infinitetalk-720", "clip", "streaming", "turbo", "fast",
                                          "quality", "add", "para", "x"]), json_values)
    return st.one_of(st.floats(allow_nan=True), st.integers(), json_values)


@st.composite
def payloads(draw) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even an object, or an arbitrary one
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=10, unique=True))
    return {n: draw(field_value(n)) for n in names}


# ----------------------------------------------------------------------------- schema


@settings(max_examples=FAST_EXAMPLES, **COMMON)
@given(payload=payloads(), allow_http=st.booleans())
def test_schema_and_overrides_never_raise_unhandled(payload, allow_http):
    from configuration import compose_config
    from worker.resolve import apply_job_overrides
    from contract.job import parse_job_input

    cfg = compose_config([])  # memoised
    with hard_deadline(2.0):
        try:
            job = parse_job_input(payload, allow_http=allow_http)
            resolved = apply_job_overrides(cfg, job)
        except BaseException as exc:  # noqa: BLE001 - the property is about what escapes
            err = assert_coded(exc)
            assert err.code is ErrorCode.E_INPUT_VALIDATION
            json.loads(err.to_error_string())
            return
    assert resolved.frame_num % 4 == 1 and resolved.motion_frame < resolved.frame_num
    json.dumps(job.log_summary())


@pytest.fixture(scope="module")
def job_ctx(tmp_path_factory, tiny_cache):
    from configuration import compose_config
    from worker.job import JobContext

    tmp = tmp_path_factory.mktemp("fuzz-job")
    cfg = compose_config([f"server.cache_dir={tiny_cache}", f"server.work_dir={tmp / 'work'}",
                          f"storage.local.root={tmp / 'out'}", "server.download.retries=1",
                          "server.download.connect_timeout_s=1", "server.download.timeout_s=3"])
    return JobContext.create(cfg, extra_roots=[MEDIA])


# Valid shape, hostile refs: validation passes, so the download stage's refusals are exercised too.
@st.composite
def job_payloads(draw) -> Any:
    base = draw(payloads())
    if isinstance(base, dict) and draw(st.booleans()):
        base.pop("cond_image", None), base.pop("video", None), base.pop("cond_video", None)
        base.pop("tts", None), base.pop("tts_audio", None), base.pop("cond_audio", None)
        base["image"] = draw(REFS)
        base["audio"] = draw(REFS)
    return base


@settings(max_examples=JOB_EXAMPLES, **COMMON)
@given(payload=job_payloads())
def test_run_job_validate_and_download_end_in_a_code(job_ctx, payload):
    """The real job entry point: everything that is not a media file ends before the model loads."""
    from worker.job import run_job

    start = time.monotonic()
    with hard_deadline(10.0):
        with pytest.raises(JobError) as info:
            run_job("fuzz", payload, job_ctx, lambda _p: None)
    assert_coded(info.value)
    assert time.monotonic() - start < 10
    assert not job_ctx.engine.loaded  # nothing here may reach the engine
    assert list((Path(job_ctx.cfg.server.work_dir)).iterdir()) == []


# ----------------------------------------------------------------------------- media


def _tone_mp3() -> bytes:
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as c:
        s = c.add_stream("libmp3lame", rate=16000)
        s.layout = "mono"
        t = np.arange(8000, dtype=np.float32) / 16000
        frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 220 * t))[None].astype(np.float32),
                                           format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return buf.getvalue()


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(MEDIA / "portrait.png").convert("RGB").resize((64, 80)).save(buf, format="JPEG")
    return buf.getvalue()


SEEDS: dict[str, list[bytes]] = {
    "image": [(MEDIA / "portrait.png").read_bytes()[:20000], _jpeg()],
    "audio": [(MEDIA / "speech_person2.wav").read_bytes()[:24000], _tone_mp3()],
    "video": [(MEDIA / "reference.mp4").read_bytes()],
}
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"RIFF\xff\xff\xff\x7fWAVEfmt ", b"ID3\x04\x00", b"fLaC", b"OggS",
         b"\x00\x00\x00\x20ftypisom", b"\x1aE\xdf\xa3", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 "]


@st.composite
def corrupted(draw, kind: str) -> bytes:
    if draw(st.integers(0, 4)) == 0:  # a known magic number, then garbage: gets past sniffing into the decoders
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=4000))
    data = bytearray(draw(st.sampled_from(SEEDS[kind])))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "zero", "ff", "truncate", "insert", "dup", "big"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        n = draw(st.integers(1, 64))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "zero":
            data[pos:pos + n] = bytes(len(data[pos:pos + n]))
        elif op == "ff":
            data[pos:pos + n] = b"\xff" * len(data[pos:pos + n])
        elif op == "truncate":
            del data[max(1, pos):]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "dup":
            data[pos:pos] = data[pos:pos + 512]
        elif op == "big":  # a size/count field set huge (PNG IHDR, RIFF sizes, MP4 box sizes)
            data[pos:pos + 4] = b"\x7f\xff\xff\xff"
    return bytes(data)


def ingest(kind: str, raw: bytes, work: Path) -> Any:
    """What the job does with one media ref, stage by stage: fetch + sniff, guard, decode."""
    from worker.inputs.fetch import FetchPolicy, fetch_media
    from worker.inputs.media_guard import MediaLimits, check_audio, check_image, check_video
    from worker.job import _engine_error

    ref = f"data:application/octet-stream;base64,{base64.b64encode(raw).decode()}"
    limits = MediaLimits(max_image_pixels=4_000_000, max_video_duration_s=60, max_video_frames=1500, max_audio_duration_s=60)
    try:
        got = fetch_media(ref, work, FetchPolicy(), kind)  # type: ignore[arg-type]
        if kind == "image":
            from PIL import Image

            check_image(got.path, limits)
            with Image.open(got.path) as im:
                return im.convert("RGB").size
        if kind == "video":
            from worker.media.media_frames import iter_video_frames

            check_video(got.path, limits)
            return sum(1 for _, _f in zip(range(30), iter_video_frames(got.path)))
        check_audio(got.path, limits)
        from worker.engine.audio_io import prepare_audio

        return prepare_audio(got.path).shape
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped exactly as the job maps it
        raise _engine_error(exc) from exc


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
@pytest.mark.parametrize("kind", ["image", "audio", "video"])
def test_corrupted_media_end_in_a_result_or_a_code(kind, tmp_path):
    seen: dict[str, int] = {"ok": 0}

    @settings(max_examples=MEDIA_EXAMPLES, **COMMON)
    @given(raw=corrupted(kind))
    def run(raw: bytes) -> None:
        work = tmp_path / "w"
        with hard_deadline(10.0):
            try:
                ingest(kind, raw, work)
                seen["ok"] += 1
            except BaseException as exc:  # noqa: BLE001
                err = assert_coded(exc)
                seen[err.code.value] = seen.get(err.code.value, 0) + 1
        for p in work.iterdir():
            p.unlink()

    run()
    assert sum(seen.values()) >= MEDIA_EXAMPLES // 2
    assert len(seen) >= 2, seen  # both outcomes were reached: the mutations are neither all benign nor all fatal


# ----------------------------------------------------------------------------- through the local endpoint (issue 13)
# The compass's fuzz target: generated payloads sent over HTTP to the local endpoint running the real handler.
# Every job must end FAILED with a coded error (none E_INTERNAL, none "without a result") or COMPLETED, and
# /health must answer within 1 s all along. FUZZ_ENDPOINT_PAYLOADS sets the count (10,000 for the full run;
# the default fits the CI budget, about two minutes on two cores).

FUZZ_ENDPOINT_PAYLOADS = int(os.environ.get("FUZZ_ENDPOINT_PAYLOADS", "2000"))
_surrogate_text = st.tuples(st.text(max_size=8), st.integers(0xD800, 0xDFFF).map(chr), st.text(max_size=8)).map("".join)
_loose = st.sampled_from([True, False, "42", "yes", 2.0, None, [], {}, "1e3", -1, 2**64])


@st.composite
def endpoint_payloads(draw) -> Any:
    base = draw(job_payloads())
    if isinstance(base, dict) and draw(st.integers(0, 3)) == 0:  # unencodable strings, anywhere
        for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
            base[name] = draw(st.one_of(_surrogate_text, st.fixed_dictionaries({"person1": _surrogate_text}),
                                        st.fixed_dictionaries({"text": _surrogate_text})))
        if draw(st.booleans()):
            base[draw(_surrogate_text)] = 1
    if isinstance(base, dict) and draw(st.integers(0, 3)) == 0:  # loose types on a valid-looking job
        base.update({"image": str(MEDIA / "portrait.png"), "audio": str(MEDIA / "speech_person1.wav")})
        base.pop("video", None), base.pop("cond_image", None), base.pop("tts", None)
        base[draw(st.sampled_from(["sample_steps", "seed", "use_apg", "frame_num", "sampler", "mode", "size"]))] = draw(_loose)
    return base


_HEALTH_WATCHER = """
import json, sys, time, pathlib, httpx
url, out, stop = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
lat = []
with httpx.Client(timeout=10, headers={"Authorization": "local"}) as c:
    while not stop.exists():
        t = time.monotonic()
        c.get(url).raise_for_status()
        lat.append(time.monotonic() - t)
        time.sleep(0.2)
out.write_text(json.dumps(lat))
"""


def test_fuzz_target_through_the_local_endpoint(tmp_path, tiny_cache):
    import subprocess
    import sys

    from tests.reliability.endpoint import LocalEndpoint

    overrides = [f"server.cache_dir={tiny_cache}", f"server.work_dir={tmp_path / 'work'}",
                 f"storage.local.root={tmp_path / 'out'}", "server.download.retries=1",
                 "server.download.connect_timeout_s=1", "server.download.timeout_s=3", "sampler=turbo"]
    ids: list[str] = []
    lat_file, stop_file = tmp_path / "health.json", tmp_path / "stop"
    with LocalEndpoint(tmp_path, overrides, workers=2) as ep:
        # /health is polled from a process of its own: a thread here would wait on this process's GIL while
        # hypothesis generates payloads, and measure that instead of the server.
        watcher = subprocess.Popen([sys.executable, "-c", _HEALTH_WATCHER, f"{ep.base}/health", str(lat_file),
                                    str(stop_file)])
        started = time.monotonic()

        @settings(max_examples=FUZZ_ENDPOINT_PAYLOADS, **COMMON)
        @given(payload=endpoint_payloads())
        def submit(payload: Any) -> None:
            # json.dumps' defaults (ASCII escapes, NaN allowed, which must be refused): lone surrogates travel as \\udxxx escapes, as
            # any JSON client may send them (httpx's json= would refuse to encode them).
            r = ep.http.post(f"{ep.base}/run", content=json.dumps({"input": payload}).encode(),
                             headers={"Content-Type": "application/json"})
            if payload is None:  # Runpod's API refuses a body without input
                assert r.status_code == 400
                return
            try:
                json.dumps(payload, allow_nan=False)
            except ValueError:  # NaN/Infinity tokens are not JSON: refused before a worker sees them
                assert r.status_code == 400 and "not valid JSON" in r.text, r.text[:300]
                return
            assert r.status_code == 200, r.text[:300]
            ids.append(r.json()["id"])
            if len(ids) % 200 == 0:  # keep the queue short so the run measures handling, not queueing
                ep.wait(ids[-1], timeout=300, poll=0.2)

        submit()
        results = {i: ep.wait(i, timeout=600, poll=0.05) for i in ids}
        wall = time.monotonic() - started
        stop_file.write_text("")
        assert watcher.wait(30) == 0, "the /health watcher failed (an error or a 10 s timeout)"
    latencies = json.loads(lat_file.read_text())
    codes: dict[str, int] = {}
    uncoded = []
    for job_id, body in results.items():
        if body["status"] == "COMPLETED":
            codes["COMPLETED"] = codes.get("COMPLETED", 0) + 1
            continue
        try:
            code = json.loads(body["error"])["code"]
        except (KeyError, ValueError, TypeError):
            uncoded.append(body)
            continue
        codes[code] = codes.get(code, 0) + 1
    print("fuzz-endpoint", json.dumps({"payloads": len(ids), "wall_s": round(wall, 1), "codes": codes,
                                       "health_max_s": round(max(latencies), 3), "health_checks": len(latencies)}))
    assert not uncoded, uncoded[:3]
    assert "E_INTERNAL" not in codes, codes
    assert len(ids) >= FUZZ_ENDPOINT_PAYLOADS * 0.85  # (the rest were bodies without input, refused with 400)
    assert latencies and max(latencies) < 1.0, max(latencies)
    assert list((tmp_path / "work").rglob("*.*")) == []
