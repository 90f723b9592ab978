"""Result stores against real backends: moto_server for S3, temp folders for volume/local."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest

from tests.worker.conftest import MotoServer, start_moto_server
from contract.errors import ErrorCode, JobError
from worker.storage import StorageSettings, make_store
from worker.storage.inline import InlineStore
from worker.storage.local import LocalStore
from worker.storage.s3 import S3Store
from worker.storage.volume import VolumeStore

MiB = 1024 * 1024


def make_file(tmp_path: Path, size: int, name: str = "v.mp4") -> Path:
    p = tmp_path / name
    p.write_bytes(os.urandom(size))
    return p


def test_s3_upload_and_presigned_get(moto_s3: MotoServer, tmp_path: Path) -> None:
    moto_s3.client().create_bucket(Bucket="results")
    f = make_file(tmp_path, 300_000)
    store = make_store(StorageSettings(kind="s3", s3=moto_s3.settings()))
    got = store.put(f, "jobs/abc/out.mp4")
    assert got.location == "s3" and got.bytes == f.stat().st_size and got.expires_in_s == 3600
    assert "X-Amz-Signature" in got.url
    r = httpx.get(got.url)
    assert r.status_code == 200 and r.content == f.read_bytes()
    head = moto_s3.client().head_object(Bucket="results", Key="jobs/abc/out.mp4")
    assert head["ContentType"] == "video/mp4"


def test_s3_public_base_url(moto_s3: MotoServer, tmp_path: Path) -> None:
    moto_s3.client().create_bucket(Bucket="results")
    store = S3Store(moto_s3.settings(public_base_url="https://cdn.example.com/r/"))
    got = store.put(make_file(tmp_path, 1000), "a/b.mp4")
    assert got.url == "https://cdn.example.com/r/a/b.mp4" and got.expires_in_s is None


def test_s3_multipart_for_big_file(moto_s3: MotoServer, tmp_path: Path) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="results")
    f = make_file(tmp_path, 11 * MiB)
    store = S3Store(moto_s3.settings(multipart_threshold_bytes=5 * MiB, multipart_chunksize_bytes=5 * MiB))
    got = store.put(f, "big.mp4")
    head = client.head_object(Bucket="results", Key="big.mp4")
    assert head["ContentLength"] == 11 * MiB
    assert head["ETag"].strip('"').endswith("-3")  # 3 parts: 5 + 5 + 1 MiB
    assert httpx.get(got.url).content == f.read_bytes()


def test_failed_multipart_leaves_no_object(tmp_path: Path) -> None:
    # A server that rejects the completion (every part "too small") makes the upload fail
    # after parts were stored: the store must abort it, leaving no object and no upload.
    with start_moto_server(S3_UPLOAD_PART_MIN_SIZE=str(64 * MiB)) as srv:
        client = srv.client()
        client.create_bucket(Bucket="results")
        f = make_file(tmp_path, 11 * MiB)
        store = S3Store(srv.settings(multipart_threshold_bytes=5 * MiB, multipart_chunksize_bytes=5 * MiB))
        with pytest.raises(JobError) as ei:
            store.put(f, "broken.mp4")
        assert ei.value.code == ErrorCode.E_UPLOAD
        assert client.list_objects_v2(Bucket="results").get("KeyCount", 0) == 0
        assert not client.list_multipart_uploads(Bucket="results").get("Uploads")


def test_s3_wrong_credentials(tmp_path: Path) -> None:
    with start_moto_server() as srv:
        iam = srv.client(service="iam")
        iam.create_user(UserName="worker")
        iam.put_user_policy(
            UserName="worker",
            PolicyName="s3",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}',
        )
        key = iam.create_access_key(UserName="worker")["AccessKey"]
        srv.client().create_bucket(Bucket="results")
        srv.enforce_auth()
        f = make_file(tmp_path, 1000)

        good = S3Store(srv.settings(access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"]))
        assert good.put(f, "ok.mp4").bytes == 1000

        for ak, sk, expected in (
            ("AKIAWRONGWRONGWRONG1", "x" * 40, "InvalidAccessKeyId"),
            (key["AccessKeyId"], "not-the-secret-" * 3, "SignatureDoesNotMatch"),
        ):
            with pytest.raises(JobError) as ei:
                S3Store(srv.settings(access_key=ak, secret_key=sk)).put(f, "bad.mp4")
            err = ei.value
            assert err.code == ErrorCode.E_UPLOAD
            assert expected in err.message and "S3_ACCESS_KEY" in err.hint
            text = err.to_error_string()
            assert sk not in text and key["SecretAccessKey"] not in text


def test_s3_missing_bucket(moto_s3: MotoServer, tmp_path: Path) -> None:
    with pytest.raises(JobError) as ei:
        S3Store(moto_s3.settings(bucket="nope")).put(make_file(tmp_path, 100), "x.mp4")
    assert ei.value.code == ErrorCode.E_UPLOAD and "nope" in ei.value.message


def test_volume_and_local_are_atomic_copies(tmp_path: Path) -> None:
    f = make_file(tmp_path, 5000)
    vol = tmp_path / "runpod-volume"
    vol.mkdir()
    got = VolumeStore(vol).put(f, "jobs/1/out.mp4")
    assert got.location == "volume" and Path(got.path) == vol / "outputs" / "jobs/1/out.mp4"
    assert Path(got.path).read_bytes() == f.read_bytes()
    assert [p.name for p in (vol / "outputs" / "jobs" / "1").iterdir()] == ["out.mp4"]
    with pytest.raises(JobError) as ei:
        VolumeStore(tmp_path / "not-mounted")
    assert ei.value.code == ErrorCode.E_UPLOAD

    loc = LocalStore(tmp_path / "outputs").put(f, "x/y.mp4")
    assert loc.location == "local" and Path(loc.path).read_bytes() == f.read_bytes()
    for bad in ("../escape.mp4", "/abs.mp4", "a//b.mp4", "a/./b.mp4", "sp ace.mp4"):
        with pytest.raises(ValueError):
            LocalStore(tmp_path / "outputs").put(f, bad)


def test_inline(tmp_path: Path) -> None:
    small = make_file(tmp_path, 1000)
    got = InlineStore(max_bytes=2000).put(small, "a.mp4")
    assert base64.b64decode(got.base64) == small.read_bytes() and got.location == "inline"
    with pytest.raises(JobError) as ei:
        InlineStore(max_bytes=500).put(small, "a.mp4")
    assert ei.value.code == ErrorCode.E_UPLOAD and "s3" in ei.value.hint
