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

from contract.errors import ErrorCode, JobError
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
    assert ei.value.hint.startswith("Send an audio file (")  # the article follows the kind
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
    pol = FetchPolicy(s3=settings, s3_allowed_prefixes=("inputs/",))
    got = fetch_media("s3://inputs/a/face.png", tmp_path, pol, "image")
    assert got.path.read_bytes() == PNG and got.source == "s3"
    with pytest.raises(JobError) as ei:
        fetch_media("s3://inputs/a/face.png", tmp_path, FetchPolicy(s3=settings, s3_allowed_prefixes=("inputs/",),
                                                                    max_bytes={"image": 10}), "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    with pytest.raises(JobError) as ei:
        fetch_media("s3://inputs/missing.png", tmp_path, pol, "image")
    assert ei.value.code == ErrorCode.E_DOWNLOAD_FAILED
    with pytest.raises(JobError) as ei:
        fetch_media("s3://inputs/a/face.png", tmp_path, FetchPolicy(), "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    assert no_leftovers(tmp_path)


# ----------------------------------------------------------------------------- s3 confused deputy (issue 13)

from hypothesis import HealthCheck, given, settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.worker.conftest import start_moto_server  # noqa: E402
from worker.inputs.fetch import s3_ref_allowed  # noqa: E402

S3_ALLOWED = ("results/inputs/", "shared/in/")
_key_chars = st.sampled_from(list("abcxyz019-_./") + ["..", "//", "\\", "\x00", "%2e", "inputs", "in"])
S3_KEYS = st.lists(_key_chars, min_size=1, max_size=12).map("".join)
S3_BUCKETS = st.sampled_from(["results", "shared", "other", "Results", "results.", "resultsx", "inputs"])


@pytest.fixture(scope="module")
def recorded_moto(tmp_path_factory):
    """A moto server that writes every request it receives to a file (moto's recorder)."""
    log = tmp_path_factory.mktemp("moto-rec") / "requests.jsonl"
    with start_moto_server(MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(log)) as srv:
        c = srv.client()
        for bucket in ("results", "shared", "other"):
            c.create_bucket(Bucket=bucket)
        c.put_object(Bucket="results", Key="infinitetalk/job-1.mp4", Body=b"someone else's result")
        c.put_object(Bucket="results", Key="inputs/face.png", Body=PNG)
        yield srv, log


def _requests(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@hsettings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(bucket=S3_BUCKETS, key=S3_KEYS)
def test_s3_refs_outside_the_allowed_prefixes_are_refused_with_no_request(recorded_moto, tmp_path_factory, bucket, key):
    srv, log = recorded_moto
    pol = FetchPolicy(s3=srv.settings(), s3_allowed_prefixes=S3_ALLOWED)
    clean = "\x00" not in key and "\\" not in key and not any(s in ("", ".", "..") for s in key.split("/"))
    if clean and s3_ref_allowed(bucket, key, S3_ALLOWED):
        return  # inside: may be fetched (the positive control is the test below)
    before = len(_requests(log))
    with pytest.raises(JobError) as ei:
        fetch_media(f"s3://{bucket}/{key}", tmp_path_factory.mktemp("dl"), pol, "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION
    assert len(_requests(log)) == before, "a refused s3:// ref reached the S3 server"


def test_s3_results_are_refused_and_inputs_fetched_with_requests_recorded(recorded_moto, tmp_path: Path) -> None:
    srv, log = recorded_moto
    pol = FetchPolicy(s3=srv.settings(), s3_allowed_prefixes=S3_ALLOWED)
    before = len(_requests(log))
    for ref in ("s3://results/infinitetalk/job-1.mp4", "s3://results/inputs/../infinitetalk/job-1.mp4",
                "s3://results/inputs//x.png", "s3://other/inputs/face.png"):
        with pytest.raises(JobError) as ei:
            fetch_media(ref, tmp_path, pol, "video")
        assert ei.value.code == ErrorCode.E_INPUT_VALIDATION and "s3_" in ei.value.details["reason"], ref
    assert len(_requests(log)) == before
    got = fetch_media("s3://results/inputs/face.png", tmp_path, pol, "image")
    assert got.path.read_bytes() == PNG
    assert len(_requests(log)) > before  # the recorder does see requests: the zero above means something
    with pytest.raises(JobError) as ei:  # no allow-list at all: every s3:// ref is refused
        fetch_media("s3://results/inputs/face.png", tmp_path, FetchPolicy(s3=srv.settings()), "image")
    assert ei.value.details["reason"] == "s3_not_allowed"


def test_worker_policy_allows_the_results_buckets_inputs_prefix_only() -> None:
    from configuration import compose_config
    from worker.wiring import fetch_policy

    pol = fetch_policy(compose_config(["storage.s3.bucket=res"]))
    assert pol.s3_allowed_prefixes == ("res/inputs/",)
    assert not s3_ref_allowed("res", "infinitetalk/j.mp4", pol.s3_allowed_prefixes)
    assert fetch_policy(compose_config(["storage.s3_inputs=[data/in/]"])).s3_allowed_prefixes == ("data/in/",)
    assert fetch_policy(compose_config([])).s3_allowed_prefixes == ()


def test_results_are_never_written_where_inputs_are_read() -> None:
    from configuration import ConfigError, compose_config
    from worker.resolve import apply_job_overrides
    from contract.job import parse_job_input

    with pytest.raises(ConfigError):
        compose_config(["storage.s3.bucket=res", "storage.key_prefix=inputs/"])
    cfg = compose_config(["storage.s3.bucket=res", "storage=s3"])
    base = {"image": "/runpod-volume/a.png", "audio": "/runpod-volume/a.wav"}
    for prefix in ("inputs", "inputs/x/", "/inputs/"):
        with pytest.raises(JobError) as ei:
            apply_job_overrides(cfg, parse_job_input({**base, "output": {"key_prefix": prefix}}))
        assert ei.value.code == ErrorCode.E_INPUT_VALIDATION and "output.key_prefix" in ei.value.to_error_string()
    assert apply_job_overrides(cfg, parse_job_input({**base, "output": {"key_prefix": "mine/"}})).key_prefix == "mine/"


# ----------------------------------------------------------------------------- malformed hosts (issue 13)

LDH = "abcdefghijklmnopqrstuvwxyz0123456789"


@st.composite
def malformed_hosts(draw) -> str:
    label = st.text(LDH, min_size=1, max_size=10)
    kind = draw(st.sampled_from(["long", "percent", "control", "empty", "chars", "punycode", "toolong"]))
    a, b = draw(label), draw(label)
    if kind == "long":
        return f"{a}.{draw(st.text(LDH, min_size=64, max_size=120))}.{b}"
    if kind == "percent":
        return f"{a}%{draw(st.sampled_from(['00', '2e', '31', '7f', 'zz']))}{b}"
    if kind == "control":
        return a + draw(st.sampled_from(["\x00", "\t", " ", "\x7f", "\x1b"])) + b
    if kind == "empty":
        return draw(st.sampled_from([f"{a}..{b}", f".{a}", f"{a}.{b}.."]))
    if kind == "chars":
        return a + draw(st.sampled_from(list("!$&'()*+,;=<>\"{}|^`~"))) + b
    if kind == "punycode":
        return f"xn--{draw(st.sampled_from(['zz', '-', 'a-', '99999999']))}.{b}"
    return ".".join([draw(st.text(LDH, min_size=60, max_size=63))] * 5)  # > 253 characters


@hsettings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(host=malformed_hosts(), scheme=st.sampled_from(["https", "http"]))
def test_malformed_hosts_are_input_errors_before_any_lookup(tmp_path_factory, host, scheme):
    looked_up: list[str] = []

    def resolver(name: str, port: int):  # the real lookup, counted
        from worker.inputs.netguard import _default_resolver

        looked_up.append(name)
        return _default_resolver(name, port)

    pol = FetchPolicy(allow_http=True, net=NetPolicy(resolver=resolver), attempts=3, backoff_s=0.01)
    with pytest.raises(JobError) as ei:
        fetch_media(f"{scheme}://{host}/a.png", tmp_path_factory.mktemp("dl"), pol, "image")
    assert ei.value.code == ErrorCode.E_INPUT_VALIDATION, ei.value.to_error_string()
    assert looked_up == []


def test_empty_and_unreadable_volume_files_are_invalid_input_with_a_hint(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    root.mkdir()
    pol = FetchPolicy(volume_roots=(root,), volume_excluded=(root / "outputs",))
    for kind in ("image", "audio", "video"):
        empty = root / f"empty.{kind}"
        empty.write_bytes(b"")
        with pytest.raises(JobError) as ei:
            fetch_media(str(empty), tmp_path / "dl", pol, kind)  # type: ignore[arg-type]
        err = ei.value
        assert err.code == ErrorCode.E_INPUT_VALIDATION and err.details["reason"] == "empty_file"
        assert kind in err.hint and "public" not in err.hint.lower()
    if os.geteuid() != 0:  # root reads anything
        locked = root / "locked.png"
        locked.write_bytes(PNG)
        locked.chmod(0)
        with pytest.raises(JobError) as ei:
            fetch_media(str(locked), tmp_path / "dl", pol, "image")
        assert ei.value.code == ErrorCode.E_INPUT_VALIDATION and ei.value.details["reason"] == "unreadable"
    (root / "outputs").mkdir()
    (root / "outputs" / "other-job.png").write_bytes(PNG)
    with pytest.raises(JobError) as ei:
        fetch_media(str(root / "outputs" / "other-job.png"), tmp_path / "dl", pol, "image")
    assert ei.value.details["reason"] == "path_excluded"
    assert no_leftovers(tmp_path / "dl")
