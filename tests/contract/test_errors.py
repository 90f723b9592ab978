import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from contract.errors import DEFAULT_HINTS, ErrorCode, JobError, error_from_pydantic, safe_preview


def test_every_code_has_a_hint():
    names = {c.value for c in ErrorCode}
    assert names == {
        "E_INPUT_VALIDATION", "E_DOWNLOAD_FAILED", "E_AUDIO_EMBEDDING", "E_PIPELINE_LOAD", "E_OOM",
        "E_TIMEOUT", "E_FFMPEG", "E_UPLOAD", "E_CANCELLED", "E_RANK_FAILED", "E_INTERNAL",
    }
    for code in ErrorCode:
        assert DEFAULT_HINTS[code] and code.default_hint == DEFAULT_HINTS[code]
        assert str(code) == code.value


def test_error_string_is_compact_json_round_trip():
    err = JobError(ErrorCode.E_OOM, "CUDA out of memory", details={"gib": 3.5})
    s = err.to_error_string()
    assert " " not in s.split('"message"')[0]  # compact separators
    data = json.loads(s)
    assert data == {"code": "E_OOM", "message": "CUDA out of memory", "hint": ErrorCode.E_OOM.default_hint,
                    "details": {"gib": 3.5}}
    back = JobError.from_error_string(s)
    assert back.code is ErrorCode.E_OOM and back.details == {"gib": 3.5}
    assert str(err) == "E_OOM: CUDA out of memory"


def test_code_from_string_and_custom_hint_and_refresh():
    err = JobError("E_INTERNAL", "boom", hint="try later", refresh_worker=True)
    assert err.code is ErrorCode.E_INTERNAL and err.hint == "try later" and err.refresh_worker
    assert JobError(ErrorCode.E_OOM, "x").refresh_worker is False
    with pytest.raises(ValueError):
        JobError("E_NOPE", "x")


def test_details_not_json_are_stringified():
    err = JobError(ErrorCode.E_INTERNAL, "x", details={"obj": object(), "t": (1, 2)})
    data = json.loads(err.to_error_string())
    assert data["details"]["t"] == [1, 2] and isinstance(data["details"]["obj"], str)


class _M(BaseModel):
    api_key: str
    n: int
    image: str


def test_error_from_pydantic_lists_fields_without_secrets_or_data_uris():
    big = "data:image/png;base64," + "A" * 10_000
    with pytest.raises(ValidationError) as ei:
        _M.model_validate({"api_key": 12345678, "n": "x", "image": 5})
    err = error_from_pydantic(ei.value)
    assert err.code is ErrorCode.E_INPUT_VALIDATION
    fields = {e["field"]: e for e in err.details["errors"]}
    assert set(fields) == {"api_key", "n", "image"}
    assert fields["api_key"]["input"] == "[REDACTED]"
    assert "12345678" not in err.to_error_string()
    assert "api_key" in err.message and "n" in err.message

    with pytest.raises(ValidationError) as ei:
        _M.model_validate({"api_key": "s", "n": big, "image": "i"})
    s = error_from_pydantic(ei.value).to_error_string()
    assert "AAAAAAAAAAAAAAAA" not in s and "10022 chars" in s


def test_safe_preview():
    assert safe_preview("https://h/x.png?X-Amz-Signature=abc") == "https://h/x.png?…"
    assert safe_preview(3) == 3
    assert safe_preview("x" * 500).endswith("(500 chars)")
    assert safe_preview({"a": 1}).startswith("<object")


# ---------------------------------------------------------------------------------------
# Messages and hints a person understands (issue 21): no library wording, the field named.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from contract.job import JobInput, known_field_names, parse_job_input  # noqa: E402

# Wording that only makes sense to a Python or pydantic developer (or leaks the machine's paths).
LIBRARY_WORDING = (
    "Value error", "Input should", "input_value", "pydantic", "Traceback", "validation error", "For further information",
    "errors.pydantic.dev", "function-", "[type=", "Field required", "Extra inputs", "NoneType", "/tmp/", "model_type",
    "dict_type", "literal_error", "ValidationError", "Assertion failed", "Exception", "KeyError", "TypeError",
)


REPO_ROOT = Path(__file__).resolve().parents[2]


def assert_human(err: JobError) -> None:
    """The message and hint are free of library wording; when the fault lies in a field, both name it."""
    for text in (err.message, err.hint):
        assert text and len(text) < 1200, text
        # The tests' own media and allowed roots live in the checkout, which may itself sit under /tmp:
        # a caller's own reference may be echoed; the worker's temp folders may not.
        text = text.replace(str(REPO_ROOT), "<checkout>")
        for word in LIBRARY_WORDING:
            # a missing weight file is named by its path on the worker (the operator's fact, under /tmp in tests)
            if word == "/tmp/" and err.code is ErrorCode.E_PIPELINE_LOAD:
                continue
            assert word not in text, (word, text)
    entries = (err.details or {}).get("errors") if isinstance(err.details, dict) else None
    field = (entries or [{}])[0].get("field") if entries else (err.details or {}).get("field") if isinstance(err.details, dict) else None
    if field:
        assert field in err.message, (field, err.message)
        assert field in err.hint, (field, err.hint)


def test_every_codes_default_hint_is_plain_words():
    for code in ErrorCode:
        assert_human(JobError(code, f"{code.value.lower()} happened"))


BASE = {"image": "https://example.com/face.png", "audio": "https://example.com/speech.wav"}
FIELDS = sorted(JobInput.model_fields)
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.lists(st.integers(), max_size=6), st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
    st.sampled_from(["stream", "qualty", "infinitetalk-1080", "ftp://x/y", "data:image/png;base64,!!!", "", "   ",
                     "/etc/passwd", "add", "para", "x" * 5000]),
)


@st.composite
def invalid_payloads(draw):
    payload = dict(BASE)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["set", "unknown", "drop", "both", "nested"]))
        if how == "set":
            payload[draw(st.sampled_from(FIELDS))] = draw(ODD_VALUES)
        elif how == "unknown":
            name = draw(st.sampled_from(["samplr", "steps", "seeds", "imagee", "audio2", "prompt_text", "preset_name",
                                         "foo", "mode_"]))
            payload[name] = draw(ODD_VALUES)
        elif how == "drop":
            payload.pop(draw(st.sampled_from(["image", "audio"])), None)
        elif how == "both":
            payload.update(draw(st.sampled_from([{"video": "https://example.com/v.mp4"}, {"tts": {"text": "hi"}},
                                                 {"cond_image": "https://example.com/b.png"}])))
        else:
            payload.update(draw(st.sampled_from([
                {"audio": {"person1": "https://e.com/a.wav", "person2": "https://e.com/b.wav"}},
                {"audio": {"person3": "https://e.com/a.wav"}},
                {"bbox": {"person1": draw(ODD_VALUES)}},
                {"bbox": {"person2": [0, 0, 10, 10]}},
                {"tts": {"text": draw(ODD_VALUES)}, "audio": None},
                {"tts": {"text": "hello", "voice2": "am_michael"}, "audio": None},
                {"output": {"target": draw(ODD_VALUES)}},
                {"output": {"key_prefix": "../up"}},
                {"frame_num": 41, "motion_frame": 41},
            ])))
    return payload


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=invalid_payloads())
def test_invalid_job_inputs_are_explained_in_plain_words_naming_the_field(payload):
    try:
        parse_job_input(payload)
    except JobError as err:
        assert err.code is ErrorCode.E_INPUT_VALIDATION
        assert_human(err)
        for entry in err.details["errors"][:4]:  # the message lists (up to four) problems, each by its field
            assert entry["field"] in err.message and entry["field"] != "input", err.message


def test_examples_of_the_plain_words():
    def err(payload):
        with pytest.raises(JobError) as ei:
            parse_job_input(payload)
        return ei.value

    e = err({"image": BASE["image"]})
    assert e.message.startswith("audio: the job has no speech") and "Add audio" in e.hint
    e = err({**BASE, "tts": {"text": "hi"}})
    assert e.message.startswith("tts: audio and tts are both given") and "not both" in e.hint
    e = err({**BASE, "samplr": "fast"})
    assert e.message == "samplr: is not a field of the job input" and e.hint == "Rename samplr to sampler, or remove it."
    e = err({**BASE, "sample_steps": 500})
    assert e.message == "sample_steps: must be at most 100 (got 500)"
    assert e.hint.startswith("Change sample_steps: denoising steps per chunk, a whole number from 1 to 100")
    e = err({**BASE, "mode": "stream"})
    assert e.message == "mode: must be one of clip or streaming (got 'stream')"
    assert "samplr" not in known_field_names() and "preset" in known_field_names()


# ----------------------------------------------------------------------------- unencodable strings (issue 13)

from hypothesis import HealthCheck, given, settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=30)
_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _any_text),
                       lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(_any_text, kids, max_size=4)),
                       max_leaves=15)


@hsettings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(message=_any_text, hint=_any_text, details=_values)
def test_any_error_serialises_to_utf8_json_with_its_code(message, hint, details):
    from contract.errors import safe_preview

    err = JobError(ErrorCode.E_INPUT_VALIDATION, message, hint=hint, details={"input": details, "preview": safe_preview(details)})
    wire = err.to_error_string().encode("utf-8")  # raises if a lone surrogate got through
    back = json.loads(wire)
    assert back["code"] == "E_INPUT_VALIDATION" and JobError.from_error_string(wire.decode()).code is err.code


def test_several_problems_in_one_field_give_its_description_once():
    with pytest.raises(JobError) as info:
        parse_job_input({"image": "https://example.com/face.png", "audio": "https://example.com/speech.wav",
                         "mask": [0, 0, 0]})
    hint = info.value.hint
    assert hint.count("where the video may move") == 1 and "(as above)" in hint
    assert_human(info.value)
