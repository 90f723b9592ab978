import json

import pytest
from pydantic import BaseModel, ValidationError

from worker.errors import DEFAULT_HINTS, ErrorCode, JobError, error_from_pydantic, safe_preview


def test_every_code_has_a_hint():
    names = {c.value for c in ErrorCode}
    assert names == {
        "E_INPUT_VALIDATION", "E_DOWNLOAD_FAILED", "E_AUDIO_EMBEDDING", "E_PIPELINE_LOAD", "E_OOM",
        "E_TIMEOUT", "E_FFMPEG", "E_UPLOAD", "E_CANCELLED", "E_INTERNAL",
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
