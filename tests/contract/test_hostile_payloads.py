"""Hostile job payloads, and valid jobs at other seeds and sizes.

Every hostile input must come back as one E_INPUT_VALIDATION naming the field, small and fast: never a
traceback, E_INTERNAL, a hang, or an answer that echoes megabytes of input or a secret. The bulk runs
through `parse_job_input` (hypothesis, fast); raw HTTP bodies (JSON's NaN/Infinity tokens, duplicate keys,
\\u0000 and lone-surrogate escapes) go through the real local endpoint and `worker.handler`. The valid jobs
render with the tiny model through the handler and are probed with PyAV.
"""
from __future__ import annotations

import io
import json
import math
import re
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st

from contract.choices import SIZE_PIXELS
from contract.errors import MAX_REPORTED_ERRORS, JobError, safe_preview
from contract.choices import MAX_FRAME_RATIO, MIN_FRAME_RATIO
from contract.job import MAX_SEED, MAX_SIDE, JobInput, known_field_names, parse_job_input

REPO = Path(__file__).resolve().parents[2]
MEDIA = REPO / "examples" / "media"
HYP = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
BASE = {"image": "/runpod-volume/a.png", "audio": "/runpod-volume/a.wav"}
MAX_ERROR_CHARS = 8192  # a refused job's whole error string, whatever it held
SECRET = "s3cr3t-T0KEN-9f8e7d"


def refused(payload, **kw) -> JobError:
    with pytest.raises(JobError) as info:
        parse_job_input(payload, **kw)
    return info.value


def assert_well_formed(err: JobError) -> dict:
    """The invariants of every refusal: the code, a field named in the message, a bounded size, no secret."""
    wire = err.to_error_string()
    assert err.code.value == "E_INPUT_VALIDATION", wire[:300]
    assert len(wire) <= MAX_ERROR_CHARS, len(wire)
    assert SECRET not in wire
    data = json.loads(wire)
    fields = [e["field"] for e in data["details"]["errors"]]
    assert fields and data["message"] and data["hint"]
    assert fields[0][:40] in data["message"], (fields, data["message"][:200])
    return data


# ----------------------------------------------------------------------------- hostile values, every field

NUMBER_FIELDS = ["seed", "sample_steps", "sample_shift", "text_guide_scale", "audio_guide_scale", "teacache_thresh",
                 "guidance_every", "silence_threshold_db", "silence_min_s", "silence_audio_guide_scale", "frame_num",
                 "motion_frame", "max_duration_s", "color_correction_strength", "width", "height", "dub_strength"]
ENUM_FIELDS = ["size", "aspect", "mode", "sampler", "audio_type", "audio_mux"]
BOOL_FIELDS = ["use_apg", "use_teacache", "silence_handling", "trim_trailing_silence", "audio_isolation", "preview"]
REF_FIELDS = ["image", "video", "audio", "mask"]
TEXT_FIELDS = ["prompt", "negative_prompt"]
OBJECT_FIELDS = ["audio", "tts", "output", "bbox", "masks"]
LIST_FIELDS = ["prompts", "loras", "webhook_events"]

BIG = 100_000
hostile_scalars = st.sampled_from([
    -1, 0, 2**63, 2**64, -(2**64), 10**300, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 5e-324,
    True, False, "42", "1e3", "NaN", "", " ", "\x00", "\ud800", "\u202eRTL", "x" * 1_000_000, None, [], {},
    [1] * BIG, {"a": 1}, 2.5, 3.0,
])
nested = st.integers(1, 10_000).map(lambda d: json.loads("[" * d + "]" * d) if d < 900 else _deep(d))


def _hostile(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return len(value) > 4096 or "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list):
        return len(value) > 256 or (len(value) > 0 and isinstance(value[0], list) and _hostile(value[0]))
    return False


def _deep(depth: int) -> list:
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


@hsettings(max_examples=300, **HYP)
@given(field=st.sampled_from(NUMBER_FIELDS + ENUM_FIELDS + BOOL_FIELDS + REF_FIELDS + TEXT_FIELDS + OBJECT_FIELDS
                             + LIST_FIELDS + ["webhook_url", "seed"]),
       value=st.one_of(hostile_scalars, nested))
def test_a_hostile_value_in_any_field_is_refused_naming_it(field, value):
    payload = {**BASE, field: value}
    started = time.monotonic()
    try:
        job = parse_job_input(payload)
    except JobError as err:
        data = assert_well_formed(err)
        tops = {f.split(".")[0].split("[")[0] for f in (e["field"] for e in data["details"]["errors"])}
        assert tops <= set(known_field_names()), tops
    else:  # only a harmless value the field takes
        assert isinstance(job, JobInput) and not _hostile(value), (field, safe_preview(value))
    assert time.monotonic() - started < 2.0


# Paths into nested objects and lists: (top-level field, inner keys/indexes), placed into a job that is valid
# around them (two speakers where the path needs them).
NESTED_PATHS = [
    ("audio", "person1"), ("audio", "person2"), ("tts", "text"), ("tts", "voice"), ("tts", "voice2"),
    ("output", "target"), ("output", "key_prefix"), ("output", "presign_expiry_s"), ("loras", 0, "ref"),
    ("loras", 0, "scale"), ("loras", 0), ("prompts", 0, "from_s"), ("prompts", 0, "text"), ("prompts", 0),
    ("bbox", "person1"), ("bbox", "person2", 2), ("mask", 0), ("mask", 1, 0), ("masks", "person1"),
    ("masks", "person2", 0, 1), ("webhook_events", 0),
]


def _nested_job(path: tuple, value) -> dict:
    two = {"audio": {"person1": "a.wav", "person2": "b.wav"}, "audio_type": "add"}
    shells = {
        "audio": dict(two), "tts": {"image": "a.png", "tts": {"text": "(s1) hi (s2) yo"}},
        "output": {"output": {}}, "loras": {"loras": [{"ref": "a.safetensors"}]},
        "prompts": {"prompts": [{"from_s": 0, "text": "a"}]}, "bbox": {**two, "bbox": {"person1": [0, 0, 5, 5],
                                                                                       "person2": [5, 5, 9, 9]}},
        "mask": {"mask": [[0, 0], [9, 0], [9, 9]]},
        "masks": {**two, "masks": {"person1": [[0, 0], [9, 0], [9, 9]], "person2": [[0, 0], [9, 0], [9, 9]]}},
        "webhook_events": {"webhook_url": "https://example.com/h", "webhook_events": ["done"]},
    }
    job = json.loads(json.dumps({**BASE, **shells[path[0]]}))
    if path[0] == "tts":
        job.pop("audio")
    node = job[path[0]]
    for step in path[1:-1]:
        node = node[step]
    if value is not _KEEP:
        node[path[-1]] = value
    return job


_KEEP = object()


def test_the_longest_side_is_the_longest_of_the_models_bucket_tables():
    from worker.engine.sampling.buckets import BUCKET_TABLES

    assert MAX_SIDE == max(max(hw) for table in BUCKET_TABLES.values() for hw, _ in table.values())
    ratios = [h / w for table in BUCKET_TABLES.values() for (h, w), _ in table.values()]
    assert (MIN_FRAME_RATIO, MAX_FRAME_RATIO) == (min(ratios), max(ratios))


@hsettings(max_examples=200, **HYP)
@given(w=st.integers(1, MAX_SIDE // 16), h=st.integers(1, MAX_SIDE // 16))
def test_a_frame_is_accepted_exactly_when_its_shape_is_one_the_model_renders(w, h):
    """Before: 2048x16 was accepted (it encodes; the model's buckets span about 1:4.6 to 4:1). A refusal names the
    side to change and a size that passes."""
    width, height = 16 * w, 16 * h
    payload = {**BASE, "width": width, "height": height}
    if MIN_FRAME_RATIO <= height / width <= MAX_FRAME_RATIO:
        assert parse_job_input(payload).height == height
        return
    data = assert_well_formed(refused(payload))
    err = data["details"]["errors"][0]
    assert err["field"] == ("height" if height / width < MIN_FRAME_RATIO else "width"), err
    suggested = int(re.search(r"(width|height) (\d+) or more", data["hint"]).group(2))
    fixed = {**payload, err["field"]: suggested}
    if suggested <= MAX_SIDE:
        assert isinstance(parse_job_input(fixed), JobInput)


@pytest.mark.parametrize("path", NESTED_PATHS)
def test_the_jobs_around_the_nested_paths_are_valid(path):
    """So that a refusal above is the hostile value's, not the surrounding job's."""
    assert isinstance(parse_job_input(_nested_job(path, _KEEP)), JobInput)


@hsettings(max_examples=250, **HYP)
@given(path=st.sampled_from(NESTED_PATHS), value=st.one_of(hostile_scalars, nested))
def test_a_hostile_value_in_a_nested_field_is_refused_naming_it(path, value):
    job = _nested_job(path, value)
    try:
        parse_job_input(job)
    except JobError as err:
        data = assert_well_formed(err)
        assert data["details"]["errors"][0]["field"].startswith(path[0]), (path, data["message"][:200])
    else:
        assert not _hostile(value), (path, safe_preview(value))


@hsettings(max_examples=60, **HYP)
@given(key=st.one_of(st.text(min_size=1, max_size=30), st.just("k" * 5000), st.just(SECRET)),
       value=st.one_of(hostile_scalars, st.just(SECRET)))
def test_unknown_keys_are_refused_without_echoing_them_at_length(key, value):
    if key in known_field_names():
        return
    err = refused({**BASE, key: value})
    data = assert_well_formed(err) if key != SECRET else json.loads(err.to_error_string())
    assert len(data["details"]["errors"][0]["field"]) < 200


@pytest.mark.parametrize("where", ["top", "audio", "bbox", "output", "tts"])
def test_a_hundred_thousand_bad_keys_give_a_small_answer_quickly(where):
    """Before: every problem was listed, each hint checked against all before it (80 s and 17 MB for 100k keys)."""
    keys = {f"k{i}": i for i in range(BIG)}
    payload = {
        "top": {**BASE, **keys},
        "audio": {**BASE, "audio": {"person1": "a.wav", **keys}},
        "bbox": {**BASE, "bbox": {k: [0, 0, 1, 1] for k in keys}},
        "output": {**BASE, "output": keys},
        "tts": {"image": "a.png", "tts": {"text": "hi", **keys}},
    }[where]
    started = time.monotonic()
    err = refused(payload)
    assert time.monotonic() - started < 3.0
    data = assert_well_formed(err)
    assert len(data["details"]["errors"]) == MAX_REPORTED_ERRORS
    assert data["details"]["more_errors"] >= BIG - MAX_REPORTED_ERRORS
    total = MAX_REPORTED_ERRORS + data["details"]["more_errors"]
    assert data["message"].startswith(f"{total} problems in the job input: ")


def test_a_megabyte_key_is_cut_in_the_answer():
    err = refused({**BASE, "x" * 1_000_000: 1})
    data = assert_well_formed(err)
    assert len(err.to_error_string()) < 2000 and "(1000000 chars)" in data["details"]["errors"][0]["field"]


@pytest.mark.parametrize("value", [2**64, 10**300, 10**4000, -(10**4000)])
def test_huge_whole_numbers_are_previewed_not_echoed(value):
    assert len(str(safe_preview(value))) <= 60
    for field in ("seed", "width", "frame_num"):
        err = refused({**BASE, field: value, **({"height": 16} if field == "width" else {})})
        assert_well_formed(err)
        assert len(err.to_error_string()) < 2000


# ----------------------------------------------------------------------------- specific classes

@pytest.mark.parametrize("coords", [[0, 0, math.inf, math.inf], [0, 0, 10, math.nan], [-math.inf, 0, 1, 1]])
def test_bbox_coordinates_must_be_finite(coords):
    """Before: [0, 0, inf, inf] passed, and the engine's int(inf) failed deep inside sampling."""
    err = refused({**BASE, "audio": {"person1": "a.wav", "person2": "b.wav"}, "audio_type": "add",
                   "bbox": {"person1": coords, "person2": [0, 0, 1, 1]}})
    assert "finite" in assert_well_formed(err)["message"]


def test_mask_points_must_be_finite():
    err = refused({**BASE, "mask": [[0, 0], [math.inf, 0], [0, 5]]})
    data = assert_well_formed(err)
    assert data["details"]["errors"][0]["field"] == "mask[1][0]"  # the union's tag is not part of the path


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "prompts", "tts"])
def test_text_with_a_nul_character_is_refused(field):
    """Before: accepted; espeak-ng (the TTS phonemizer) and other C consumers stop at NUL."""
    value = {"prompts": [{"from_s": 0, "text": "a\x00b"}], "tts": {"text": "hi\x00there"}}.get(field, "a\x00b")
    payload = {**BASE, field: value}
    if field == "tts":
        payload.pop("audio")
    assert "NUL" in assert_well_formed(refused(payload))["message"]


@pytest.mark.parametrize("voice", ["../../../etc/passwd", "/abs/voice", "af heart", "x" * 65, "\u202eaf_heart", "-x"])
def test_tts_voice_must_be_a_voice_pack_name(voice):
    """Before: any 4096 characters passed, refused only once the TTS model had loaded."""
    data = assert_well_formed(refused({"image": "a.png", "tts": {"text": "(s1) hi (s2) yo", "voice2": voice}}))
    assert data["details"]["errors"][0]["field"] == "tts.voice2"
    assert parse_job_input({"image": "a.png", "tts": {"text": "hi", "voice": "af_heart"}}).tts.voice == "af_heart"


@pytest.mark.parametrize("url, needle", [
    ("https://exa mple.com/hook", "spaces"),
    ("https://example.com/a\x00b", "control"),
    (f"https://user:{SECRET}@example.com/hook", "credentials"),
    ("ftp://example.com/hook", "http"),
    ("https://example.com:0/hook", "port 0"),
    ("https://" + "a" * 70 + ".com/", "63"),
    ("http://[::1/x", "malformed"),
])
def test_webhook_url_has_the_form_of_a_url(url, needle):
    """Before: only `^https?://[^\\s/?#]+` was checked, and only when webhook_events was given."""
    data = assert_well_formed(refused({**BASE, "webhook_url": url}))
    assert data["details"]["errors"][0]["field"] == "webhook_url" and needle in data["message"]


def test_webhook_url_query_is_not_logged():
    job = parse_job_input({**BASE, "webhook_url": f"https://example.com/hook?token={SECRET}"})
    assert SECRET not in json.dumps(job.log_summary())


def test_port_zero_is_malformed_for_media_too():
    assert "port 0" in assert_well_formed(refused({**BASE, "image": "https://example.com:0/a.png"}))["message"]


@pytest.mark.parametrize("width, height, ok", [
    (16, 16, True), (MAX_SIDE, 448, True), (MAX_SIDE + 16, 448, False), (2**64, 16, False), (0, 16, False),
    (-16, 16, False), (24, 16, False), (57600, 16, False), (16384, 32, False),
])
def test_width_and_height_bounds(width, height, ok):
    """Before: 57600x16 fit the 720 tier's budget and failed only in the encoder, after the whole render."""
    payload = {**BASE, "width": width, "height": height}
    if ok:
        assert parse_job_input(payload).width == width
    else:
        assert assert_well_formed(refused(payload))["details"]["errors"][0]["field"] == "width"


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "gopher://x/y", "ftp://x/y.png", "javascript:alert(1)",
                                 "https://u:p@x.com/a.png", "https://" + "a" * 5000, "data:image/png,abc",
                                 "s3://B/x", "http://x.com/a.png", "https://x.com:99999/a.png", "https://a..b/x"])
def test_odd_media_refs_are_refused_by_form(ref):
    for field in ("image", "video", "mask"):
        payload = {**BASE, field: ref}
        if field == "video":
            payload.pop("image")
        data = assert_well_formed(refused(payload))
        assert data["details"]["errors"][0]["field"] == field and "u:p@" not in json.dumps(data)


# ----------------------------------------------------------------------------- the handler and the endpoint

@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    vol = tmp_path_factory.mktemp("vol")
    (vol / "portrait.png").write_bytes((MEDIA / "portrait.png").read_bytes())
    (vol / "speech.wav").write_bytes((MEDIA / "speech_person1.wav").read_bytes())
    (vol / "link.png").symlink_to("/etc/passwd")
    (vol / "etc").symlink_to("/etc")
    return vol


@pytest.fixture(scope="module")
def ctx(volume, tmp_path_factory):
    import worker.handler as handler_mod
    from configuration import compose_config
    from worker.job import JobContext

    tmp = tmp_path_factory.mktemp("hp")
    cfg = compose_config([f"server.cache_dir={tmp}/c", f"server.work_dir={tmp}/w", f"server.volume_root={volume}"])
    saved, handler_mod._CTX = handler_mod._CTX, JobContext.create(cfg)
    yield handler_mod
    handler_mod._CTX = saved


@pytest.mark.parametrize("image", ["{v}/../../etc/passwd", "../../etc/passwd", "/etc/passwd", "{v}/link.png",
                                   "{v}/etc/passwd", "https://0x7f.1/a.png", "https://[::1]/a.png",
                                   "https://2130706433/a.png", "https://169.254.169.254/latest/meta-data"])
def test_refs_outside_the_volume_or_to_private_hosts_are_refused_by_the_handler(ctx, volume, image):
    out = ctx.handler({"id": "j", "input": {"image": image.format(v=volume), "audio": f"{volume}/speech.wav",
                                            "output": {"target": "inline"}}})
    err = json.loads(out["error"])
    assert err["code"] == "E_INPUT_VALIDATION" and err["message"].startswith("image"), err


def test_an_infinite_speaker_box_is_an_input_error_not_an_internal_one(ctx, volume):
    """Before: the job reached sampling and failed there as E_INTERNAL (OverflowError from int(inf))."""
    speech = f"{volume}/speech.wav"
    out = ctx.handler({"id": "j", "input": {
        "image": f"{volume}/portrait.png", "audio": {"person1": speech, "person2": speech}, "audio_type": "add",
        "bbox": {"person1": [0, 0, math.inf, math.inf], "person2": [0, 0, 5, 5]}, "output": {"target": "inline"},
        "sampler": "lightning"}})
    err = json.loads(out["error"])
    assert err["code"] == "E_INPUT_VALIDATION" and err["message"].startswith("2 problems"), err
    assert [e["field"] for e in err["details"]["errors"]] == ["bbox.person1[2]", "bbox.person1[3]"]


def _raw(server_base: str, body: str | bytes) -> requests.Response:
    return requests.post(f"{server_base}/local-test/runsync?wait=20000", data=body, timeout=60,
                         headers={"Authorization": "test", "Content-Type": "application/json"})


@pytest.fixture(scope="module")
def endpoint(volume, tmp_path_factory):
    from tests.processes import handler_server

    tmp = tmp_path_factory.mktemp("ep")
    env = {"INFINITETALK_OVERRIDES": json.dumps([f"server.cache_dir={tmp}/c", f"server.work_dir={tmp}/w",
                                                  f"server.volume_root={volume}"]),
           "INFINITETALK_PRELOAD": "0"}
    srv = handler_server(env, tmp)
    yield srv
    srv.stop()


def _input(volume: Path, extra: str) -> str:
    return ('{"input": {"image": "%s/portrait.png", "audio": "%s/speech.wav", "output": {"target": "inline"}%s}}'
            % (volume, volume, extra))


# NaN/Infinity are not JSON: the endpoint refuses the body (400) before a worker sees it; the worker's own refusal of
# non-finite numbers is tested above with Python floats.
NON_JSON_BODIES = [', "seed": NaN', ', "sample_shift": Infinity', ', "max_duration_s": -Infinity',
                   ', "bbox": {"person1": [0, 0, Infinity, 1]}', ', "mask": [[0,0],[NaN,0],[0,5]]']

RAW_BODIES = [
    (', "seed": 1e400', "seed"), (', "seed": -0.0', "seed"), (', "seed": "42"', "seed"), (', "seed": true', "seed"),
    (', "prompt": "a\\u0000b"', "prompt"), (', "prompt": "\\ud800"', "prompt"), (', "prompt": "%s"' % ("x" * 1_000_000),
                                                                              "prompt"),
    (', "size": "infinitetalk-480", "size": "INFINITETALK-480"', "size"),  # duplicate keys: JSON's last one wins
    (', "mode": "Streaming"', "mode"), (', "frame_num": 80', "frame_num"), (', "max_duration_s": 0', "max_duration_s"),
    (', "max_duration_s": -5', "max_duration_s"), (', "aspect": "2:1"', "aspect"), (', "width": 16', "height"),
    (', "prompts": [%s]' % ",".join('{"from_s": %d, "text": "a"}' % i for i in range(20_000)), "prompts"),
    (', "webhook_url": "https://%s@example.com/x"' % SECRET, "webhook_url"), (', "k": 1, "k": 2', "k"),
]


@pytest.mark.parametrize("extra, field", RAW_BODIES, ids=[f[1] + str(i) for i, f in enumerate(RAW_BODIES)])
def test_raw_http_bodies_through_the_local_endpoint(endpoint, volume, extra, field):
    r = _raw(endpoint.base, _input(volume, extra))
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert body["status"] == "FAILED", str(body)[:300]
    assert len(body["error"]) <= MAX_ERROR_CHARS and SECRET not in r.text
    err = json.loads(body["error"])
    assert err["code"] == "E_INPUT_VALIDATION" and err["message"].startswith(field), err["message"][:200]


@pytest.mark.parametrize("extra", NON_JSON_BODIES)
def test_non_json_number_tokens_are_refused_by_the_endpoint(endpoint, volume, extra):
    r = _raw(endpoint.base, _input(volume, extra))
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"], r.text[:300]


@pytest.mark.parametrize("body, status", [
    ('{"input": null}', 400), ('{}', 400), ('[]', 400), ('{"input": {"a": ' + "[" * 10_000 + "]" * 10_000 + "}}", 400),
    ('{"input": [1, 2]}', 200), ('{"input": "x"}', 200), ('{"input": 5}', 200), ('{"input": {}}', 200),
    ('{"input": {"image": "a.png", "audio": "b.wav"', 400), (b'{"input": {"prompt": "\xff\xfe"}}', 400),
    ('{"input": {"seed": ' + "9" * 5000 + "}}", 400), ('{"input": {"seed": 1}} trailing', 400),
])
def test_input_missing_null_or_not_an_object(endpoint, body, status):
    r = _raw(endpoint.base, body)
    assert r.status_code == status, r.text[:300]
    if status == 200:
        err = json.loads(r.json()["error"])
        assert err["code"] == "E_INPUT_VALIDATION", err


# ----------------------------------------------------------------------------- other seeds and sizes

def _wav(path: Path, seconds: float, rate: int = 16000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2 + 0.02 * rng.standard_normal(t.size))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _probe(mp4: bytes) -> tuple[int, int, int, float, float]:
    """(frames decoded, width, height, video seconds, audio seconds) read back with PyAV."""
    with av.open(io.BytesIO(mp4)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.decode(video=0))
        vdur = float(v.duration * v.time_base)
        adur = float(a.duration * a.time_base)
        return frames, v.codec_context.width, v.codec_context.height, vdur, adur


def _tiny(hw: tuple[int, int]) -> tuple[int, int]:
    """The tiny model renders every frame size at 1/16, snapped to 16 (testkit/tiny.py's bucket_scale)."""
    return tuple(max(16, round(v / 16 / 16) * 16) for v in hw)


# 81 frames a chunk with 9 carried: chunk boundaries lie at 81 and 153 frames (3.24 s, 6.12 s).
VALID_JOBS = [
    ({"seed": 0, "aspect": "9:16"}, [3.28], (848, 480)),
    ({"seed": MAX_SEED, "aspect": "16:9", "mode": "clip"}, [3.28], (480, 848)),
    ({"seed": 7, "width": 640, "height": 640, "frame_num": 5, "motion_frame": 1}, [0.24], (640, 640)),
    ({"seed": 12345, "width": 16, "height": 16}, [6.16], (16, 16)),
    ({"seed": 1, "aspect": "4:5", "audio_type": "add"}, [1.0, 1.2], (704, 560)),
    ({"seed": 2, "aspect": "1:1", "audio_type": "para"}, [1.6, 0.8], (640, 640)),
]


@pytest.mark.parametrize("extra, seconds, hw", VALID_JOBS, ids=[str(j[0]["seed"]) for j in VALID_JOBS])
def test_valid_jobs_at_other_seeds_and_sizes_render_what_they_asked_for(ctx, volume, tmp_path, extra, seconds, hw):
    import base64

    tracks = [_wav(tmp_path / f"p{i}.wav", s, seed=i) for i, s in enumerate(seconds)]
    audio = {f"person{i + 1}": str(p) for i, p in enumerate(tracks)}
    for i, p in enumerate(tracks):
        (volume / f"{tmp_path.name}-{i}.wav").write_bytes(p.read_bytes())
        audio[f"person{i + 1}"] = str(volume / f"{tmp_path.name}-{i}.wav")
    job = {"image": str(volume / "portrait.png"), "audio": audio, "sampler": "lightning",
           "output": {"target": "inline"}, "preview": False, **extra}
    out = ctx.handler({"id": "ok", "input": job})
    assert "error" not in out, out.get("error")
    frames, width, height, vdur, adur = _probe(base64.b64decode(out["video_base64"]))
    assert (height, width) == _tiny(hw) == (out["height"], out["width"])
    assert out["seed"] == extra["seed"] and frames == out["num_frames"]
    speech = sum(seconds) if extra.get("audio_type") != "para" else max(seconds)
    if extra.get("mode") == "clip":
        assert frames == 81 and out["truncated"] is True and out["truncated_s"] == pytest.approx(speech - 81 / 25, abs=0.05)
    elif extra.get("frame_num") == 5:
        assert abs(frames - speech * 25) <= 1
    else:
        assert abs(frames - speech * 25) <= 1, (frames, speech)
    assert abs(vdur - frames / 25) <= 0.04 and abs(adur - vdur) <= 0.05, (vdur, adur)


# ----------------------------------------------------------------------------- every bound, through resolve

def _opt(**fields):
    return st.fixed_dictionaries({}, optional=fields)


BOUNDED_JOBS = _opt(
    seed=st.sampled_from([0, 1, MAX_SEED]), size=st.sampled_from(["infinitetalk-480", "infinitetalk-720"]),
    aspect=st.sampled_from(["16:9", "9:16", "1:1", "4:5"]), mode=st.sampled_from(["clip", "streaming"]),
    sampler=st.sampled_from(["fast", "turbo", "lightning", "quality"]), sample_steps=st.sampled_from([1, 100]),
    sample_shift=st.sampled_from([0.5, 20]), frame_num=st.sampled_from([5, 9, 81, 197, 201]),
    motion_frame=st.sampled_from([1, 5, 9, 197]), max_duration_s=st.sampled_from([0.5, 1800]),
    guidance_every=st.sampled_from([1, 10]), teacache_thresh=st.sampled_from([1e-9, 1]),
    dub_strength=st.sampled_from([1e-9, 1]), width=st.sampled_from([16, 640, 2048, 57600]),
    height=st.sampled_from([16, 640, 2048, 57600]), output=st.sampled_from([{"target": "inline"}, {"presign_expiry_s": 60},
                                                                      {"presign_expiry_s": 604800}]),
)


@hsettings(max_examples=300, **HYP)
@given(extra=BOUNDED_JOBS, video=st.booleans())
def test_jobs_at_every_bound_resolve_or_are_refused_with_a_code(extra, video):
    from configuration import compose_config
    from worker.resolve import apply_job_overrides, generation_settings

    payload = {**({"video": "/runpod-volume/v.mp4"} if video else {"image": "/runpod-volume/a.png"}),
               "audio": "/runpod-volume/a.wav", **extra}
    if not video:
        payload.pop("dub_strength", None)
    for cfg in _CONFIGS(compose_config):
        try:
            resolved = apply_job_overrides(cfg, parse_job_input(payload))
        except JobError as err:
            assert_well_formed(err)
            continue
        settings = generation_settings(resolved)
        assert resolved.motion_frame < resolved.frame_num and settings.max_frames >= 1
        if resolved.frame_size is not None:
            h, w = resolved.frame_size
            assert h % 16 == 0 and w % 16 == 0 and 16 <= min(h, w) and h * w <= SIZE_PIXELS[resolved.size]
            assert max(h, w) <= 16384  # what libx264 can encode


def _CONFIGS(compose_config, _cache=[]):  # noqa: B006 - composed once per session
    if not _cache:
        _cache += [compose_config(env={}), compose_config(["gpu=h100_80"], env={})]
    return _cache
