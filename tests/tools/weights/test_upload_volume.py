"""upload-volume against a real S3 server (moto_server) behind a stand-in for Runpod's part limit.

moto enforces S3's *minimum* part size (lowered here through S3_UPLOAD_PART_MIN_SIZE) but no
maximum, so a small HTTP proxy in front of it plays Runpod's S3 API: it rejects any UploadPart
whose body exceeds the limit with S3's EntityTooLarge, counts the parts it forwards, and can be
told to fail parts from a given number on (an interrupted upload).
"""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.exceptions import ClientError

from tests.processes import stop_process
from tools.weights.manifest import MANIFEST_NAME, build_manifest
from tools.weights.upload_volume import make_client, upload_volume

KiB = 1024
MIN_PART = 256 * KiB
LIMIT = 1024 * KiB  # the stand-in's maximum part size (Runpod's is 500 MB)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_url():
    port = _free_port()
    env = dict(os.environ, S3_UPLOAD_PART_MIN_SIZE=str(MIN_PART))
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto_server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


class PartLimitProxy:
    def __init__(self, upstream: str, limit: int) -> None:
        self.upstream = urlsplit(upstream)
        self.limit = limit
        self.fail_from: int | None = None
        self.parts: list[int] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = parse_qs(urlsplit(self.path).query)
                if self.command == "PUT" and "partNumber" in query and "uploadId" in query:
                    number = int(query["partNumber"][0])
                    size = int(self.headers.get("x-amz-decoded-content-length") or length)
                    if size > proxy.limit:
                        return self._error(400, "EntityTooLarge", f"part {number} has {size} bytes, limit {proxy.limit}")
                    if proxy.fail_from is not None and number >= proxy.fail_from:
                        return self._error(400, "InjectedFailure", f"part {number} refused on purpose")
                    proxy.parts.append(number)
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"connection", "transfer-encoding"}}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                head = self.command == "HEAD"  # a HEAD answer carries the object's length, not its body's
                for k, v in resp.getheaders():
                    if k.lower() not in {"connection", "transfer-encoding"} and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _error(self, status: int, code: str, message: str) -> None:
                data = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def proxy(moto_url):
    p = PartLimitProxy(moto_url, LIMIT)
    yield p
    p.close()


@pytest.fixture()
def s3(proxy, request):
    client = make_client(proxy.url, region="us-east-1", access_key="test", secret_key="test", max_attempts=1)
    bucket = "vol" + str(abs(hash(request.node.name)) % 10**8)
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.fixture()
def weights_dir(tmp_path):
    root = tmp_path / "weights"
    (root / "ckpt").mkdir(parents=True)
    big = os.urandom(3 * LIMIT + 123 * KiB)  # four parts at the limit's size
    (root / "ckpt" / "big.safetensors").write_bytes(big)
    (root / "ckpt" / "config.json").write_text('{"dim": 64}')
    build_manifest(root).save(root / MANIFEST_NAME)
    return root


def _objects(client, bucket) -> dict[str, int]:
    resp = client.list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["Size"] for o in resp.get("Contents", [])}


def test_uploads_in_parts_within_the_limit(s3, proxy, weights_dir):
    client, bucket = s3
    report = upload_volume(weights_dir, bucket, client=client, prefix="weights", part_size=LIMIT, min_part_size=MIN_PART, max_part_size=LIMIT)
    by_key = {f.key: f for f in report.files}
    assert by_key["weights/ckpt/big.safetensors"].action == "multipart"
    assert sorted(proxy.parts) == [1, 2, 3, 4]
    assert [f.key for f in report.files][-1] == f"weights/{MANIFEST_NAME}"  # the manifest goes last
    body = client.get_object(Bucket=bucket, Key="weights/ckpt/big.safetensors")["Body"].read()
    assert body == (weights_dir / "ckpt" / "big.safetensors").read_bytes()
    assert _objects(client, bucket)["weights/ckpt/config.json"] == len('{"dim": 64}')
    # a second run sends nothing
    again = upload_volume(weights_dir, bucket, client=client, prefix="weights", part_size=LIMIT, min_part_size=MIN_PART, max_part_size=LIMIT)
    assert {f.action for f in again.files} == {"skipped"} and len(proxy.parts) == 4


def test_interrupted_upload_resumes_with_the_missing_parts_only(s3, proxy, weights_dir):
    client, bucket = s3
    proxy.fail_from = 3
    with pytest.raises(ClientError, match="InjectedFailure"):
        upload_volume(weights_dir, bucket, client=client, part_size=LIMIT, min_part_size=MIN_PART, max_part_size=LIMIT, concurrency=1)
    assert sorted(proxy.parts) == [1, 2]
    assert "ckpt/big.safetensors" not in _objects(client, bucket)
    proxy.fail_from = None
    report = upload_volume(weights_dir, bucket, client=client, part_size=LIMIT, min_part_size=MIN_PART, max_part_size=LIMIT)
    big = next(f for f in report.files if f.key == "ckpt/big.safetensors")
    assert (big.parts_reused, big.parts_uploaded) == (2, 2)
    assert sorted(proxy.parts) == [1, 2, 3, 4]
    body = client.get_object(Bucket=bucket, Key="ckpt/big.safetensors")["Body"].read()
    assert body == (weights_dir / "ckpt" / "big.safetensors").read_bytes()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_server_enforces_the_part_limit_and_the_tool_refuses_to_exceed_it(s3, proxy, weights_dir):
    client, bucket = s3
    with pytest.raises(ValueError, match="part size"):
        upload_volume(weights_dir, bucket, client=client, part_size=2 * LIMIT, min_part_size=MIN_PART, max_part_size=LIMIT)
    # told a wrong (too high) limit, the tool's oversized parts meet the server's refusal
    with pytest.raises(ClientError, match="EntityTooLarge"):
        upload_volume(weights_dir, bucket, client=client, part_size=2 * LIMIT, min_part_size=MIN_PART, max_part_size=4 * LIMIT)
    # and moto enforces the minimum for every part but the last
    up = client.create_multipart_upload(Bucket=bucket, Key="tiny-parts")
    e1 = client.upload_part(Bucket=bucket, Key="tiny-parts", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * KiB)["ETag"]
    e2 = client.upload_part(Bucket=bucket, Key="tiny-parts", UploadId=up["UploadId"], PartNumber=2, Body=b"y" * KiB)["ETag"]
    with pytest.raises(ClientError, match="EntityTooSmall"):
        client.complete_multipart_upload(
            Bucket=bucket,
            Key="tiny-parts",
            UploadId=up["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
        )


def test_a_resumed_upload_with_another_part_size_starts_afresh(s3, proxy, weights_dir):
    client, bucket = s3
    proxy.fail_from = 2
    with pytest.raises(ClientError):
        upload_volume(weights_dir, bucket, client=client, part_size=LIMIT, min_part_size=MIN_PART, max_part_size=LIMIT, concurrency=1)
    proxy.fail_from = None
    half = LIMIT // 2
    report = upload_volume(weights_dir, bucket, client=client, part_size=half, min_part_size=MIN_PART, max_part_size=LIMIT)
    big = next(f for f in report.files if f.key == "ckpt/big.safetensors")
    assert big.parts_reused == 0 and big.parts_uploaded == 7
    body = client.get_object(Bucket=bucket, Key="ckpt/big.safetensors")["Body"].read()
    assert body == (weights_dir / "ckpt" / "big.safetensors").read_bytes()
