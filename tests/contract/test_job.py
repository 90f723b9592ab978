import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contract.errors import ErrorCode, JobError
from contract.job import (
    JobInput,
    JobOutput,
    job_input_json_schema,
    media_ref_kind,
    parse_job_input,
    validate_media_ref,
)

IMG = "https://example.com/face.png"
AUD = "https://example.com/speech.wav"


def base(**kw):
    d = {"image": IMG, "audio": AUD}
    d.update(kw)
    return d


def fields_of(exc: JobError) -> set[str]:
    return {e["field"] for e in exc.details["errors"]}


def bad(payload, **kw) -> JobError:
    with pytest.raises(JobError) as ei:
        parse_job_input(payload, **kw)
    assert ei.value.code is ErrorCode.E_INPUT_VALIDATION
    return ei.value


def test_minimal_and_audio_shorthand():
    j = parse_job_input(base())
    assert j.audio.person1 == AUD and j.audio.person2 is None and j.speakers == 1
    assert j.effective_audio_type is None
    assert j.media_refs() == {"image": IMG, "audio.person1": AUD}


def test_seed_aliases():
    j = parse_job_input({
        "cond_video": "s3://bucket/v.mp4",
        "cond_audio": {"person1": "/runpod-volume/a.wav", "person2": "data:audio/wav;base64,UklGRg=="},
        "audio_type": "para",
        "sample_text_guide_scale": 3.5,
        "sample_audio_guide_scale": 2.5,
        "base_seed": 42,
        "max_duration": 10,
        "n_prompt": "blurry",
        "sample_steps": 8,
        "sample_shift": 2,
        "use_teacache": True,
        "teacache_thresh": 0.3,
        "use_apg": True,
        "color_correction_strength": 0.5,
        "motion_frame": 9,
        "frame_num": 81,
        "size": "infinitetalk-720",
        "mode": "streaming",
        "bbox": {"person1": [0, 0, 10, 10], "person2": [10, 0, 20, 10]},
    })
    assert j.video == "s3://bucket/v.mp4" and j.image is None
    assert j.text_guide_scale == 3.5 and j.audio_guide_scale == 2.5 and j.seed == 42
    assert j.max_duration_s == 10 and j.negative_prompt == "blurry"
    assert j.speakers == 2 and j.effective_audio_type == "para"
    tts = parse_job_input({"cond_image": IMG, "tts_audio": {"text": "(s1) hi (s2) yo", "human1_voice": "a",
                                                              "human2_voice": "b"}})
    assert tts.tts.voice == "a" and tts.tts.voice2 == "b" and tts.speakers == 2
    assert tts.effective_audio_type == "add"


def test_duplicate_alias_refused():
    e = bad({"image": IMG, "cond_image": IMG, "audio": AUD})
    assert "only one of" in e.to_error_string()


@pytest.mark.parametrize("payload", [
    {"audio": AUD},
    {"image": IMG, "video": "https://e.com/v.mp4", "audio": AUD},
    {"image": IMG},
    {"image": IMG, "audio": AUD, "tts": {"text": "hi"}},
])
def test_exactly_one_rules(payload):
    bad(payload)


def test_unknown_field_forbidden_top_level_and_nested():
    e = bad(base(sampel_steps=4))
    assert fields_of(e) == {"sampel_steps"}
    e = bad(base(output={"target": "s3", "bucket": "x"}))
    assert "output.bucket" in fields_of(e)
    e = bad(base(audio={"person1": AUD, "person3": AUD}))
    assert "audio.person3" in fields_of(e)


def test_two_speakers_need_audio_type():
    e = bad(base(audio={"person1": AUD, "person2": AUD}))
    assert "audio_type" in e.to_error_string()
    # meaningful only with two speakers: accepted but ignored with one
    assert parse_job_input(base(audio_type="add")).effective_audio_type is None
    bad(base(audio_type="mix", audio={"person1": AUD, "person2": AUD}))


def test_bbox_rules():
    assert parse_job_input(base(bbox={"person1": [1, 2, 3, 4]})).bbox == {"person1": [1, 2, 3, 4]}
    assert "bbox.person1" in fields_of(bad(base(bbox={"person1": [3, 2, 1, 4]})))
    bad(base(bbox={"person1": [1, 4, 3, 2]}))
    bad(base(bbox={"person1": [1, 2, 3]}))
    bad(base(bbox={"person1": [-1, 2, 3, 4]}))
    bad(base(bbox={"person3": [1, 2, 3, 4]}))
    bad(base(bbox={"person2": [1, 2, 3, 4]}))  # one speaker only


@pytest.mark.parametrize("name,ok,ko", [
    ("sample_steps", [1, 100], [0, 101]),
    ("sample_shift", [0.5, 20], [0.4, 20.5]),
    ("text_guide_scale", [0, 20], [-0.1, 20.1]),
    ("audio_guide_scale", [0, 20], [-1, 21]),
    ("frame_num", [5, 81, 201], [1, 4, 80, 205]),
    ("motion_frame", [1, 9], [0, 2, 8]),
    ("max_duration_s", [0.5, 1800], [0.4, 1801]),
    ("seed", [0, 2**32 - 1], [-1, 2**32]),
    ("teacache_thresh", [0.01, 1], [0, 1.5]),
    ("guidance_every", [1, 10], [0, 11, 1.5]),
    ("silence_handling", [True, False], ["yes", 1]),
    ("silence_threshold_db", [-120, -45, 0], [-121, 0.5, "quiet"]),
    ("silence_min_s", [0.04, 10], [0, 0.03, 10.5]),
    ("silence_audio_guide_scale", [0, 20], [-0.1, 20.1]),
    ("color_correction_strength", [0, 1], [-0.1, 1.1]),
    ("size", ["infinitetalk-480", "infinitetalk-720"], ["infinitetalk-1080", "480"]),
    ("mode", ["clip", "streaming"], ["stream"]),
    ("sampler", ["quality", "fast", "turbo"], ["slow"]),
])
def test_bounds(name, ok, ko):
    for v in ok:
        assert getattr(parse_job_input(base(**{name: v})), name) == v
    for v in ko:
        assert name in fields_of(bad(base(**{name: v}))), (name, v)


def test_audio_isolation_and_mux_rules():
    job = parse_job_input(base(audio_isolation=True, audio_mux="voice"))
    assert job.audio_isolation is True and job.audio_mux == "voice"
    assert parse_job_input(base(audio_isolation=True)).audio_mux is None  # the worker's default: original
    assert parse_job_input(base(audio_mux="original")).audio_mux == "original"  # the default, said out loud
    for v in ("yes", 1):
        assert fields_of(bad(base(audio_isolation=v))) == {"audio_isolation"}, v
    for v in ("mix", "", "Voice"):
        assert fields_of(bad(base(audio_isolation=True, audio_mux=v))) == {"audio_mux"}, v
    assert fields_of(bad(base(audio_mux="voice"))) == {"audio_mux"}  # no isolated voice without isolation
    assert fields_of(bad(base(audio_isolation=False, audio_mux="voice"))) == {"audio_mux"}
    tts = {"image": base()["image"], "tts": {"text": "hello"}}
    assert fields_of(bad({**tts, "audio_isolation": True})) == {"audio_isolation"}  # spoken speech is clean
    assert parse_job_input({**tts, "audio_isolation": False}).audio_isolation is False


def test_dub_strength_needs_a_video_and_lies_in_0_1():
    video = {"video": "https://example.com/v.mp4", "audio": AUD}
    for v in (0.05, 0.5, 1):
        assert parse_job_input({**video, "dub_strength": v}).dub_strength == v
    for v in (0, -0.5, 1.5, "half"):
        assert "dub_strength" in fields_of(bad({**video, "dub_strength": v})), v
    assert fields_of(bad(base(dub_strength=0.5))) == {"dub_strength"}  # an image has no motion to keep
    assert parse_job_input(video).dub_strength is None


def test_motion_frame_below_frame_num():
    bad(base(frame_num=9, motion_frame=9))
    assert parse_job_input(base(frame_num=9, motion_frame=5)).motion_frame == 5


def test_output_spec():
    j = parse_job_input(base(output={"target": "inline", "key_prefix": "a/b-c_", "presign_expiry_s": 600}))
    assert j.output.target == "inline"
    for o in ({"target": "ftp"}, {"key_prefix": "../x"}, {"key_prefix": "/abs"}, {"key_prefix": "a b"},
              {"presign_expiry_s": 10}, {"presign_expiry_s": 8 * 86400}):
        bad(base(output=o))


@pytest.mark.parametrize("ref,kind", [
    ("https://e.com/a.png", "https"),
    ("data:image/png;base64,iVBORw0KGgo=", "data"),
    ("s3://my-bucket/path/to/a.png", "s3"),
    ("/runpod-volume/in/a.png", "path"),
    ("in/a.png", "path"),
])
def test_media_ref_kinds(ref, kind):
    assert validate_media_ref(ref) == ref and media_ref_kind(ref) == kind


@pytest.mark.parametrize("ref,needle", [
    ("file:///etc/passwd", "unsupported scheme file"),
    ("ftp://e.com/a.png", "unsupported scheme ftp"),
    ("gopher://e.com/", "unsupported scheme"),
    ("http://e.com/a.png", "http://"),
    ("s3://", "s3://bucket/key"),
    ("s3://bucket", "s3://bucket/key"),
    ("data:image/png,plain", "base64"),
    ("https://user:pw@e.com/a.png", "credentials"),
    ("https:///nohost", "no host"),
    ("", "empty"),
])
def test_media_ref_refused(ref, needle):
    with pytest.raises(ValueError) as ei:
        validate_media_ref(ref)
    assert needle in str(ei.value)
    e = bad({"image": ref, "audio": AUD})
    assert "image" in fields_of(e)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(parts=st.lists(st.tuples(st.sampled_from(["a", "é", "語", "😀"]), st.integers(1, 300)), min_size=1, max_size=20),
       where=st.sampled_from(["path", "s3"]))
def test_over_long_paths_and_keys_are_the_callers_error(parts, where):
    """Linux refuses a path component over 255 bytes and a path of 4096; S3 a key over 1024 bytes. A ref past them
    is an input error naming the field, found before the worker reads anything; one within them passes."""
    names = [ch * n for ch, n in parts]
    if where == "path":
        ref = "/runpod-volume/" + "/".join(names)
        fits = all(len(n.encode()) <= 255 for n in names) and len(ref.encode()) < 4096 and len(ref) <= 4096
    else:
        key = "/".join(names)
        ref = "s3://bucket/" + key
        fits = len(key.encode()) <= 1024 and len(ref) <= 4096
    if fits:
        assert validate_media_ref(ref) == ref
        return
    with pytest.raises(ValueError, match="longer than"):
        validate_media_ref(ref)
    e = bad({"image": ref, "audio": AUD})
    assert e.code is ErrorCode.E_INPUT_VALIDATION and "image" in fields_of(e)


def test_http_only_when_allowed():
    bad(base(image="http://e.com/a.png"))
    assert parse_job_input(base(image="http://e.com/a.png"), allow_http=True).image == "http://e.com/a.png"
    assert parse_job_input(base(audio={"person1": "http://e.com/a.wav"}), allow_http=True).audio.person1


def test_error_does_not_echo_data_uri():
    blob = "data:audio/wav;base64," + "Q" * 5000
    e = bad({"image": IMG, "audio": blob, "size": "nope"})
    s = e.to_error_string()
    assert "QQQQQQQQQQQQ" not in s


def test_non_mapping_payload():
    bad(["x"])


def test_tts_rules():
    assert parse_job_input({"image": IMG, "tts": {"text": "hello"}}).speakers == 1
    bad({"image": IMG, "tts": {"text": ""}})
    bad({"image": IMG, "tts": {"text": "hi", "voice2": "v"}})  # voice2 without (s2)


def test_json_schema_export():
    schema = job_input_json_schema()
    json.dumps(schema)
    props = schema["properties"]
    assert "cond_image" in json.dumps(schema) or "image" in props
    assert schema.get("additionalProperties") is False
    assert JobInput.model_json_schema()["properties"]["sample_steps"]["anyOf"][0]["maximum"] == 100


def test_log_summary_hides_payloads():
    j = parse_job_input({"image": "data:image/png;base64," + "A" * 1000, "audio": "https://e.com/a.wav?X-Amz-Signature=zz"})
    s = json.dumps(j.log_summary())
    assert "AAAAAAAA" not in s and "zz" not in s


def test_job_output():
    o = JobOutput(video_url="https://x/y.mp4", storage="s3", duration_s=2.0, num_frames=50, fps=25, width=640,
                  height=640, seed=1, timings_s={"sampling": 1.0})
    assert o.model_dump()["video_url"]
    with pytest.raises(ValidationError):
        JobOutput(storage="s3", duration_s=2.0, num_frames=50, fps=25, width=640, height=640, seed=1)
    with pytest.raises(ValidationError):
        JobOutput(video_url="u", video_path="p", storage="s3", duration_s=2.0, num_frames=50, fps=25,
                  width=640, height=640, seed=1)


# ----------------------------------------------------------------------------- strict types (issue 13)

from hypothesis import HealthCheck, given, settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_BASE = {"image": "/runpod-volume/a.png", "audio": "/runpod-volume/a.wav"}
INT_FIELDS = ["sample_steps", "guidance_every", "frame_num", "motion_frame", "seed", "base_seed"]
FLOAT_FIELDS = ["sample_shift", "text_guide_scale", "sample_text_guide_scale", "audio_guide_scale",
                "sample_audio_guide_scale", "teacache_thresh", "max_duration_s", "max_duration", "color_correction_strength"]
BOOL_FIELDS = ["use_apg", "use_teacache"]
STR_FIELDS = ["size", "mode", "sampler", "preset", "prompt", "negative_prompt", "audio_type"]
_numeric_text = st.one_of(st.integers(0, 100).map(str), st.sampled_from(["1.5", "1e3", " 7 ", "0x10"]))
_bool_text = st.sampled_from(["yes", "no", "true", "false", "1", "0", "on", "off", "True"])


@st.composite
def loose_values(draw) -> tuple[str, object]:
    kind = draw(st.sampled_from(["int", "float", "bool", "str"]))
    if kind == "int":
        return draw(st.sampled_from(INT_FIELDS)), draw(st.one_of(
            st.booleans(), _numeric_text, st.integers(1, 99).map(float), st.floats(1.1, 99.9)))
    if kind == "float":
        return draw(st.sampled_from(FLOAT_FIELDS)), draw(st.one_of(st.booleans(), _numeric_text))
    if kind == "bool":
        return draw(st.sampled_from(BOOL_FIELDS)), draw(st.one_of(_bool_text, st.integers(0, 1), st.floats(0, 1)))
    return draw(st.sampled_from(STR_FIELDS)), draw(st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False)))


@hsettings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(field_value=loose_values())
def test_loose_types_are_refused_naming_the_field(field_value):
    name, value = field_value
    with pytest.raises(JobError) as ei:
        parse_job_input({**_BASE, name: value})
    err = ei.value
    assert err.code is ErrorCode.E_INPUT_VALIDATION
    assert [e["field"] for e in err.details["errors"]] == [name] or name in err.message, err.details


@pytest.mark.parametrize("name", INT_FIELDS + FLOAT_FIELDS + BOOL_FIELDS + STR_FIELDS + ["output", "tts", "bbox", "video"])
def test_explicit_null_is_refused_not_read_as_the_default(name):
    with pytest.raises(JobError) as ei:
        parse_job_input({**_BASE, name: None})
    assert ei.value.code is ErrorCode.E_INPUT_VALIDATION and "null" in ei.value.to_error_string()


def test_strict_contract_keeps_json_numbers_and_the_seed_guides_aliases():
    job = parse_job_input({"cond_image": "/runpod-volume/a.png", "cond_audio": {"person1": "/runpod-volume/a.wav"},
                           "base_seed": 42, "sample_text_guide_scale": 5, "sample_audio_guide_scale": 4.0,
                           "max_duration": 30, "n_prompt": "blurry", "use_apg": True, "sample_steps": 8,
                           "bbox": {"person1": [0, 0, 10, 10]}})
    assert (job.seed, job.text_guide_scale, job.max_duration_s, job.use_apg, job.sample_steps) == (42, 5.0, 30.0, True, 8)
    assert job.negative_prompt == "blurry" and job.image == "/runpod-volume/a.png"


def test_mask_polygon_rules():
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    assert parse_job_input(base(mask=square)).mask == square
    assert parse_job_input(base()).mask is None  # default: no mask
    for polygon in ([[0, 0], [10, 0]], [[0, 0], [5, 5], [10, 10]], [[1, 1], [1, 1], [1, 1]],
                    [[-1, 0], [10, 0], [10, 10]], [[0, 0], [10, 0, 1], [10, 10]], [[0, 0]] * 257):
        assert any(f.startswith("mask") for f in fields_of(bad(base(mask=polygon)))), polygon


def test_per_speaker_masks_rules():
    two = dict(audio={"person1": "https://e.com/a.wav", "person2": "https://e.com/b.wav"}, audio_type="para")
    tri = [[0, 0], [10, 0], [0, 10]]
    ok = parse_job_input(base(**two, masks={"person1": tri, "person2": tri}))
    assert ok.masks == {"person1": tri, "person2": tri} and parse_job_input(base(**two)).masks is None
    assert "masks" in fields_of(bad(base(**two, masks={"person1": tri, "person2": tri},
                                         bbox={"person1": [0, 0, 5, 5], "person2": [5, 0, 9, 5]})))
    assert "masks" in fields_of(bad(base(**two, masks={"person1": tri})))  # both speakers' polygons
    assert "masks" in fields_of(bad(base(masks={"person1": tri, "person2": tri})))  # one speaker
    assert any(f.startswith("masks.person2") for f in fields_of(bad(base(**two, masks={"person1": tri, "person2": tri[:2]}))))


def test_a_mask_may_be_an_image_ref_fetched_like_image():
    two = dict(audio={"person1": "https://e.com/a.wav", "person2": "https://e.com/b.wav"}, audio_type="para")
    job = parse_job_input(base(mask="s3://bucket/masks/m.png"))
    assert job.mask == "s3://bucket/masks/m.png" and job.media_refs()["mask"] == "s3://bucket/masks/m.png"
    tri = [[0, 0], [10, 0], [0, 10]]
    both = parse_job_input(base(**two, masks={"person1": tri, "person2": "https://e.com/p2.png"}))
    assert both.masks["person1"] == tri and both.media_refs()["masks.person2"] == "https://e.com/p2.png"
    assert "masks.person1" not in both.media_refs()
    secret = "data:image/png;base64," + "A" * 4000
    assert len(str(parse_job_input(base(mask=secret)).log_summary()["mask"])) < 100  # previewed, not logged whole
    for wrong in ("ftp://e.com/m.png", "http://e.com/m.png", 5, {"x": 1}, True):
        err = bad(base(mask=wrong))
        assert fields_of(err) == {"mask"} and "polygon" in err.message + (err.hint or ""), err.message
    assert fields_of(bad(base(**two, masks={"person1": tri, "person2": "ftp://e.com/m.png"}))) == {"masks.person2"}
    assert parse_job_input(base(mask="http://e.com/m.png"), allow_http=True).mask == "http://e.com/m.png"


def test_loras_shape_and_bounds():
    job = parse_job_input(base(loras=[{"ref": "style.safetensors", "scale": 0.5},
                                      {"ref": "https://e.com/l.safetensors"}]))
    assert [(lo.ref, lo.scale) for lo in job.loras] == [("style.safetensors", 0.5), ("https://e.com/l.safetensors", 1.0)]
    assert parse_job_input(base()).loras is None  # default: none
    assert fields_of(bad(base(loras=[{"ref": "a"}] * 5))) == {"loras"}  # at most MAX_LORAS
    assert fields_of(bad(base(loras=[{"ref": "a"}, {"ref": "ftp://h/x"}]))) == {"loras[1].ref"}
    assert fields_of(bad(base(loras=[{"ref": "a", "weight": 1}]))) == {"loras[0].weight"}
    assert fields_of(bad(base(loras=[{"scale": 1}]))) == {"loras[0].ref"}
    assert fields_of(bad(base(loras=[{"ref": "http://e.com/l.safetensors"}]))) == {"loras[0].ref"}  # http is off
    err = bad(base(loras=[{"ref": "a", "scale": "1"}]))  # strict: JSON numbers only
    assert fields_of(err) == {"loras[0].scale"} and "Strength" not in err.hint and "strength, -2 to 2" in err.hint


@hsettings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10)))
def test_lora_scale_is_a_finite_number_within_the_limit(scale):
    from contract.choices import LORA_SCALE_LIMIT

    payload = base(loras=[{"ref": "/runpod-volume/loras/a.safetensors", "scale": scale}])
    if scale == scale and abs(scale) <= LORA_SCALE_LIMIT:
        assert parse_job_input(payload).loras[0].scale == float(scale)
    else:
        assert fields_of(bad(payload)) == {"loras[0].scale"}


def test_loras_log_summary_hides_signed_queries_and_data():
    job = parse_job_input(base(loras=[{"ref": "https://e.com/l.safetensors?X-Amz-Signature=abc"},
                                      {"ref": "data:application/octet-stream;base64," + "A" * 400}]))
    text = json.dumps(job.log_summary())
    assert "abc" not in text and "A" * 40 not in text and "e.com/l.safetensors" in text
