import io
import json
import logging

import pytest
import structlog

from worker.logging_setup import (
    REDACTED,
    bind_job,
    clear_secrets,
    configure_logging,
    get_logger,
    redact_text,
    register_secret,
)

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture()
def stream():
    buf = io.StringIO()
    clear_secrets()
    configure_logging("DEBUG", stream=buf, secrets=[SECRET])
    yield buf
    clear_secrets()
    structlog.reset_defaults()
    for h in list(logging.getLogger().handlers):
        if getattr(h, "_infinitetalk", False):
            logging.getLogger().removeHandler(h)


def lines(buf):
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_lines_with_job_id(stream):
    log = get_logger("test")
    with bind_job("job-123", attempt=1):
        log.info("started", stage="validate")
    log.info("after")
    first, second = lines(stream)
    assert first["event"] == "started" and first["job_id"] == "job-123" and first["level"] == "info"
    assert first["attempt"] == 1 and "ts" in first
    assert "job_id" not in second


def test_registered_secret_value_removed_everywhere(stream):
    log = get_logger()
    log.info("uploading", note=f"using {SECRET} now", nested={"a": [f"x{SECRET}y"]})
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        log.exception("upload failed")
    logging.getLogger("botocore").warning("stdlib says %s", SECRET)
    text = stream.getvalue()
    assert SECRET not in text
    assert text.count(REDACTED) >= 4
    assert len(lines(stream)) == 3


def test_secret_keys_and_presigned_urls(stream):
    url = ("https://bkt.s3.amazonaws.com/out.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIAXXXX%2F20250101%2Fus-east-1&X-Amz-Signature=deadbeefcafebabe1234"
           "&X-Amz-Expires=3600")
    get_logger().info("uploaded", url=url, api_key="k-live-123456", headers={"Authorization": "Bearer abcdefgh12345"},
                      password="hunter22", key_prefix="outputs/", token=None)
    (line,) = lines(stream)
    assert "deadbeefcafebabe1234" not in json.dumps(line) and "AKIAXXXX" not in json.dumps(line)
    assert "X-Amz-Expires=3600" in line["url"] and line["url"].startswith("https://bkt.s3.amazonaws.com/out.mp4?")
    assert line["api_key"] == REDACTED and line["password"] == REDACTED
    assert line["headers"]["Authorization"] == REDACTED
    assert line["key_prefix"] == "outputs/" and line["token"] is None


def test_redact_text_helpers():
    clear_secrets()
    register_secret("abc")  # too short to register
    assert redact_text("abc") == "abc"
    register_secret("supersecretvalue")
    assert redact_text("x supersecretvalue y") == f"x {REDACTED} y"
    assert "Bearer " + REDACTED in redact_text("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x.y")
    assert redact_text("https://u:pw123@h/x") == f"https://u:{REDACTED}@h/x"
    big = "data:audio/wav;base64," + "A" * 1000
    assert redact_text(big) == "data:audio/wav;base64,…(1000 chars)"
    clear_secrets()


def test_level_filtering():
    buf = io.StringIO()
    configure_logging("WARNING", stream=buf, capture_stdlib=False)
    log = get_logger()
    log.info("hidden")
    log.warning("shown")
    assert [l["event"] for l in lines(buf)] == ["shown"]
    structlog.reset_defaults()


def test_lone_surrogates_in_logged_fields_never_break_a_utf8_stream():
    """A caller's string may hold lone surrogates (JSON's \\ud800 escape); every log line must still encode."""
    from hypothesis import given, settings, strategies as st

    lone = st.integers(0xD800, 0xDFFF).map(chr)
    surrogate_text = st.tuples(st.text(max_size=6), lone, st.text(max_size=6)).map("".join)

    @settings(max_examples=60, deadline=None)
    @given(value=surrogate_text, key=surrogate_text, event=surrogate_text)
    def check(value, key, event):
        raw = io.BytesIO()
        out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
        configure_logging("DEBUG", stream=out, capture_stdlib=False)
        try:
            get_logger("test").info(event, field=value, nested={key: [value]})
            line = json.loads(raw.getvalue().decode("utf-8"))
        finally:
            structlog.reset_defaults()
        assert "field" in line and isinstance(line["event"], str)
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(line, ensure_ascii=False))

    check()
