"""Secrets never appear in logs or outputs.

The `secrets` fixture (conftest.py) scans everything pytest captured for a test, the files it
watches and the outputs it hands over, for the values the test registered. Here jobs run with
credentials set through the config (S3 keys, as a deployment sets them) and with signed URLs in
the payload, through success and failure, with the worker's own logging configured as the
handler configures it.
"""
from __future__ import annotations

import secrets as pysecrets

import pytest

from tests.reliability.conftest import tiny_clip_payload
from tests.worker.conftest import start_moto_server
from contract.errors import JobError


@pytest.fixture(scope="module")
def moto():
    with start_moto_server() as srv:
        yield srv


def test_credentials_and_signed_urls_stay_out_of_logs_and_outputs(tmp_path, make_ctx, moto, secrets):
    from configuration import secret_values
    from worker.job import run_job
    from worker.logging_setup import configure_logging

    access = "AKIA" + pysecrets.token_hex(8).upper()
    secret = pysecrets.token_urlsafe(30)
    sig, token = pysecrets.token_hex(16), pysecrets.token_hex(12)
    secrets.add(access, secret, sig, token)
    moto.client().create_bucket(Bucket="results")
    ctx = make_ctx(tmp_path, "storage.target=s3", f"storage.s3.endpoint={moto.endpoint}", "storage.s3.bucket=results",
                   f"storage.s3.access_key={access}", f"storage.s3.secret_key={secret}")
    configure_logging("DEBUG", secrets=secret_values(ctx.cfg))

    out = run_job("ok", tiny_clip_payload(output={"target": "s3"}), ctx, lambda p: secrets.output(p))
    url = out.pop("video_url")
    assert "X-Amz-Signature=" in url  # presigned: the URL itself carries the access key id, by design
    secrets.output(out)

    signed = f"https://10.0.0.1/face.png?X-Amz-Signature={sig}&token={token}&X-Amz-Credential={access}"
    for payload in (
        tiny_clip_payload(image=signed),
        tiny_clip_payload(audio=f"https://user:{secret}@example.invalid/a.wav"),
        {**tiny_clip_payload(), "frame_num": 80, "prompt": "x"},
    ):
        with pytest.raises(JobError) as info:
            run_job("bad", payload, ctx, lambda p: secrets.output(p))
        secrets.output(info.value.to_error_string())

    bad = make_ctx(tmp_path, "storage.target=s3", f"storage.s3.endpoint={moto.endpoint}", "storage.s3.bucket=missing",
                   f"storage.s3.access_key={access}", f"storage.s3.secret_key={secret}")
    with pytest.raises(JobError) as info:
        run_job("nobucket", tiny_clip_payload(output={"target": "s3"}), bad, lambda p: secrets.output(p))
    assert info.value.code.value == "E_UPLOAD"
    secrets.output(info.value.to_error_string())
