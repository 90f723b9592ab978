"""fetch_media against a real HTTP server on 127.0.0.1 (reachable only via the allow-list)."""
from __future__ import annotations

import base64
import io
import os
import threading
import wave
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from worker.errors import ErrorCode, JobError
from worker.inputs.fetch import FetchPolicy, fetch_media, redact_ref
from worker.inputs.netguard import NetPolicy


def png_bytes(size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 0.2, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x01" * int(seconds * rate))
    return buf.getvalue()


PNG = png_bytes()
BIG = b"\x89PNG\r\n\x1a\n" + os.urandom(2 * 1024 * 1024)


class _Handler(BaseHTTPRequestHandler):
    hits: Counter = Counter()

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        self.hits[path] += 1
        n = self.hits[path]
        port = self.server.server_address[1]
        if path == "/img.png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif path == "/audio.wav":
            self._send(200, wav_bytes(), {"Content-Type": "audio/wav"})
        elif path == "/lying.png":  # HTML served as image/png
            self._send(200, b"<html><body>nope</body></html>", {"Content-Type": "image/png"})
        elif path == "/redirect-ok":
            self._send(302, headers={"Location": f"http://127.0.0.1:{port}/img.png"})
        elif path == "/redirect-private":
            self._send(302, headers={"Location": "http://10.0.0.7/img.png"})
        elif path == "/redirect-metadata":
            self._send(301, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif path == "/redirect-loop":
            self._send(302, headers={"Location": "/redirect-loop"})
        elif path == "/flaky":
            if n <= 2:
                self._send(503, b"busy", {"Retry-After": "0"})
            else:
                self._send(200, PNG)
        elif path == "/always-503":
            self._send(503, b"busy")
        elif path == "/missing":
            self._send(404, b"not found")
        elif path == "/big-declared":
            self._send(200, BIG)
        elif path == "/big-undeclared":  # no Content-Length: the streamed count must stop it
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(0, len(BIG), 65536):
                self.wfile.write(BIG[i : i + 65536])
            self.close_connection = True
        else:
            self._send(404)


@pytest.fixture()
def server():
    _Handler.hits = Counter()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler.hits
    srv.shutdown()
    srv.server_close()


def local_policy(**kw) -> FetchPolicy:
    base = dict(allow_http=True, net=NetPolicy(allow=("127.0.0.1/32",)), backoff_s=0.01, attempts=3)
    base.update(kw)
    return FetchPolicy(**base)


def no_leftovers(d: Path) -> bool:
    return not any(p.name.endswith(".part") for p in d.iterdir()) if d.exists() else True


def test_fetch_image_via_allow_list(server, tmp_path: Path) -> None:
    url, _ = server
    got = fetch_media(url + "/img.png", tmp_path, local_policy(), "image")
    assert got.path.read_bytes() == PNG
    assert got.size == len(PNG)
    assert got.content_type == "image/png"
    assert got.source == "http"
    assert got.path.suffix == ".png"


def test_default_policy_refuses_loopback(server, tmp_path: Path) -> None:
    url, hits = server
    with pytest.raises(JobError) as ei:
        fetch_media(url + "/img.png", tmp_path, FetchPolicy(allow_http=True), "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    assert "loopback" in ei.value.message
    assert sum(hits.values()) == 0
    # and http:// itself is off by default
    with pytest.raises(JobError) as ei:
        fetch_media(url + "/img.png", tmp_path, FetchPolicy(net=NetPolicy(allow=("127.0.0.1/32",))), "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION and "scheme" in ei.value.message


def test_redirect_followed_and_rechecked(server, tmp_path: Path) -> None:
    url, _ = server
    got = fetch_media(url + "/redirect-ok", tmp_path, local_policy(), "image")
    assert got.path.read_bytes() == PNG
    for path, word in (("/redirect-private", "private"), ("/redirect-metadata", "metadata")):
        with pytest.raises(JobError) as ei:
            fetch_media(url + path, tmp_path, local_policy(), "image")
        assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
        assert word in ei.value.message and "redirected" in ei.value.message
    with pytest.raises(JobError) as ei:
        fetch_media(url + "/redirect-loop", tmp_path, local_policy(), "image")
    assert ei.value.code == ErrorCode.E_DOWNLOAD_FAILED and "redirects" in ei.value.message
    assert no_leftovers(tmp_path)


@pytest.mark.parametrize("path", ["/big-declared", "/big-undeclared"])
def test_size_cap(server, tmp_path: Path, path: str) -> None:
    url, _ = server
    with pytest.raises(JobError) as ei:
        fetch_media(url + path, tmp_path, local_policy(max_bytes={"image": 1024 * 1024}), "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    assert "limit" in ei.value.message
    assert list(tmp_path.iterdir()) == []  # partial download deleted


def test_retries_after_503_then_success(server, tmp_path: Path) -> None:
    url, hits = server
    got = fetch_media(url + "/flaky", tmp_path, local_policy(), "image")
    assert got.path.read_bytes() == PNG
    assert hits["/flaky"] == 3


def test_503_gives_up_after_attempts(server, tmp_path: Path) -> None:
    url, hits = server
    with pytest.raises(JobError) as ei:
        fetch_media(url + "/always-503", tmp_path, local_policy(attempts=2), "image")
    assert ei.value.code == ErrorCode.E_DOWNLOAD_FAILED and "503" in ei.value.message
    assert hits["/always-503"] == 2


def test_404_not_retried(server, tmp_path: Path) -> None:
    url, hits = server
    with pytest.raises(JobError) as ei:
        fetch_media(url + "/missing?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIAXX", tmp_path, local_policy(), "image")
    assert ei.value.code == ErrorCode.E_DOWNLOAD_FAILED
    assert "404" in ei.value.message
    assert hits["/missing"] == 1
    assert "SECRETSIG" not in ei.value.to_error_string() and "AKIAXX" not in ei.value.to_error_string()


def test_connection_refused_is_download_failed(tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(JobError) as ei:
        fetch_media(f"http://127.0.0.1:{port}/x.png", tmp_path, local_policy(attempts=2), "image")
    assert ei.value.code == ErrorCode.E_DOWNLOAD_FAILED


def test_content_sniff_mismatch(server, tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(JobError) as ei:
        fetch_media(url + "/lying.png", tmp_path, local_policy(), "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION and "not a supported image" in ei.value.message
    with pytest.raises(JobError) as ei:
        fetch_media(url + "/img.png", tmp_path, local_policy(), "audio")
    assert "image/png" in ei.value.message
    got = fetch_media(url + "/audio.wav", tmp_path, local_policy(), "audio")
    assert got.content_type == "audio/x-wav"
    assert no_leftovers(tmp_path)


def test_data_uri(tmp_path: Path) -> None:
    ref = "data:image/png;base64," + base64.b64encode(PNG).decode()
    got = fetch_media(ref, tmp_path, FetchPolicy(), "image")
    assert got.path.read_bytes() == PNG and got.source == "data"
    with pytest.raises(JobError) as ei:
        fetch_media(ref, tmp_path, FetchPolicy(max_bytes={"image": 10}), "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    assert base64.b64encode(PNG).decode()[:40] not in ei.value.to_error_string()
    with pytest.raises(JobError):
        fetch_media("data:image/png;base64,@@@notbase64@@@", tmp_path, FetchPolicy(), "image")
    with pytest.raises(JobError):
        fetch_media("data:text/plain,hello", tmp_path, FetchPolicy(), "image")


def test_volume_paths(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    (root / "inputs").mkdir(parents=True)
    (root / "inputs" / "face.png").write_bytes(PNG)
    outside = tmp_path / "secret.png"
    outside.write_bytes(PNG)
    (root / "inputs" / "link.png").symlink_to(outside)
    (root / "inputs" / "dirlink").symlink_to(tmp_path)
    (root / "inputs" / "inner.png").symlink_to(root / "inputs" / "face.png")
    dest = tmp_path / "dl"
    pol = FetchPolicy(volume_roots=(root,))

    got = fetch_media(str(root / "inputs" / "face.png"), dest, pol, "image")
    assert got.path.read_bytes() == PNG and got.source == "volume" and got.path.parent == dest
    assert fetch_media(str(root / "inputs" / "inner.png"), dest, pol, "image").size == len(PNG)

    for ref in (
        str(root / "inputs" / ".." / ".." / "secret.png"),
        str(outside),
        "/etc/passwd",
        str(root / "inputs" / "link.png"),
        str(root / "inputs" / "dirlink" / "secret.png"),
    ):
        with pytest.raises(JobError) as ei:
            fetch_media(ref, dest, pol, "image")
        assert ei.value.code == ErrorCode.E_INPUT_VALIDATION, ref
    with pytest.raises(JobError) as ei:
        fetch_media(str(root / "inputs" / "nope.png"), dest, pol, "image")
    assert ei.value.code == ErrorCode.E_DOWNLOAD_FAILED
    assert no_leftovers(dest)


def test_unsupported_schemes(tmp_path: Path) -> None:
    for ref in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/", "relative/path.png"):
        with pytest.raises(JobError) as ei:
            fetch_media(ref, tmp_path, FetchPolicy(), "image")
        assert ei.value.code == ErrorCode.E_INPUT_VALIDATION


def test_redact_ref() -> None:
    r = redact_ref("https://user:pw@host.example/a.png?X-Amz-Signature=abc&foo=bar")
    assert "pw" not in r and "abc" not in r and "bar" not in r and "host.example/a.png" in r
    assert redact_ref("data:image/png;base64," + "A" * 1000).startswith("data:image/png;base64,<")


def test_s3_ref(moto_s3, tmp_path: Path) -> None:
    client, settings = moto_s3.client(), moto_s3.settings()
    client.create_bucket(Bucket="inputs")
    client.put_object(Bucket="inputs", Key="a/face.png", Body=PNG)
    pol = FetchPolicy(s3=settings)
    got = fetch_media("s3://inputs/a/face.png", tmp_path, pol, "image")
    assert got.path.read_bytes() == PNG and got.source == "s3"
    with pytest.raises(JobError) as ei:
        fetch_media("s3://inputs/a/face.png", tmp_path, FetchPolicy(s3=settings, max_bytes={"image": 10}), "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    with pytest.raises(JobError) as ei:
        fetch_media("s3://inputs/missing.png", tmp_path, pol, "image")
    assert ei.value.code == ErrorCode.E_DOWNLOAD_FAILED
    with pytest.raises(JobError) as ei:
        fetch_media("s3://inputs/a/face.png", tmp_path, FetchPolicy(), "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    assert no_leftovers(tmp_path)
