"""Fault injection against real processes and sockets.

- S3: moto behind a TCP proxy that the test can stop (connections dropped, port closed) or stall
  mid-upload; the store retries, then fails with E_UPLOAD, and no object appears.
- Downloads: a server that resets connections (RST) before or in the middle of the body.
- A full disk in the work folder: a real tmpfs of a few hundred KiB (mounted here; CI runs as root)
  filled with ballast so that the download, or the MP4 encoder mid-write, hits ENOSPC.
  The encoder failing mid-write is our "ffmpeg killed": the mux runs in-process (PyAV), so the
  nearest real failure is libav's write failing under it; the job must end in E_FFMPEG with no
  half-written MP4 and an empty work folder.
- The engine raising OOM: the handler answers E_OOM with refresh_worker, and the next job runs.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.reliability.conftest import PORTRAIT, SPEECH, tiny_clip_payload
from tests.worker.conftest import start_moto_server
from contract.errors import ErrorCode, JobError
from worker.inputs.fetch import FetchPolicy, fetch_media
from worker.inputs.netguard import NetPolicy

MiB = 1024 * 1024


# ----------------------------------------------------------------------------- a stoppable TCP proxy


class Proxy:
    """Forwards 127.0.0.1:port to an upstream; can stop (drop everything, refuse) or stall."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.forwarded_up = 0
        self.stop_after: int | None = None  # bytes towards the server before the "crash"
        self.stall = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.stall.is_set():
                    time.sleep(0.05)
                if upward:
                    self.forwarded_up += len(data)
                    if self.stop_after is not None and self.forwarded_up > self.stop_after:
                        self.kill()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def kill(self) -> None:
        """The server 'process' dies: the port closes and every connection is reset."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def restart(self) -> None:
        self.stop_after = None
        self.start()


@pytest.fixture(scope="module")
def moto():
    with start_moto_server() as srv:
        yield srv


def _big_file(tmp: Path, size: int = 12 * MiB) -> Path:
    p = tmp / "video.mp4"
    with open(p, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypisom" + os.urandom(size - 12))
    return p


def _store(moto, proxy: Proxy, **kw):
    from worker.storage.s3 import S3Store

    settings = moto.settings(
        endpoint_url=f"http://127.0.0.1:{proxy.port}", multipart_threshold_bytes=5 * MiB, multipart_chunksize_bytes=5 * MiB,
        max_concurrency=1, **{"connect_timeout_s": 1, "read_timeout_s": 1, "attempts": 3, **kw},
    )
    return S3Store(settings)


def _object_exists(moto, bucket: str, key: str) -> bool:
    try:
        moto.client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception:  # noqa: BLE001 - botocore ClientError 404
        return False


def test_s3_server_stopped_mid_upload_gives_e_upload_and_no_object(moto, tmp_path, secrets):
    moto.reset()
    moto.client().create_bucket(Bucket="results")
    secrets.add("testing-secret-not-in-logs")
    host, port = moto.endpoint.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)))
    proxy.stop_after = 6 * MiB  # dies during the second part
    store = _store(moto, proxy)
    start = time.monotonic()
    with pytest.raises(JobError) as info:
        store.put(_big_file(tmp_path), "out/stopped.mp4")
    assert info.value.code is ErrorCode.E_UPLOAD, info.value.to_error_string()
    assert time.monotonic() - start < 60
    proxy.restart()
    assert not _object_exists(moto, "results", "out/stopped.mp4")
    # Storage left by the dead upload: S3 keeps incomplete multipart uploads until aborted (the
    # bucket's AbortIncompleteMultipartUpload lifecycle rule removes them; see infra/).
    pending = moto.client().list_multipart_uploads(Bucket="results").get("Uploads", [])
    assert all(u["Key"] == "out/stopped.mp4" for u in pending)


def test_s3_server_stalled_then_back_retries_and_succeeds(moto, tmp_path):
    moto.reset()
    moto.client().create_bucket(Bucket="results")
    host, port = moto.endpoint.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)))
    store = _store(moto, proxy, read_timeout_s=1)
    proxy.stall.set()
    threading.Timer(1.5, proxy.stall.clear).start()  # slow for a while, then fine
    stored = store.put(_big_file(tmp_path, 6 * MiB), "out/slow.mp4")
    assert stored.key == "out/slow.mp4" and _object_exists(moto, "results", "out/slow.mp4")
    head = moto.client().head_object(Bucket="results", Key="out/slow.mp4")
    assert head["ContentLength"] == 6 * MiB
    assert moto.client().list_multipart_uploads(Bucket="results").get("Uploads", []) == []


def test_s3_server_stalled_for_good_gives_e_upload(moto, tmp_path):
    moto.reset()
    moto.client().create_bucket(Bucket="results")
    host, port = moto.endpoint.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)))
    store = _store(moto, proxy, attempts=2)
    proxy.stall.set()
    try:
        start = time.monotonic()
        with pytest.raises(JobError) as info:
            store.put(_big_file(tmp_path, 1 * MiB), "out/stalled.mp4")
        assert info.value.code is ErrorCode.E_UPLOAD
        assert time.monotonic() - start < 60
    finally:
        proxy.kill()  # the hung server dies with the buffered requests (un-stalling would replay them)
        proxy.stall.clear()
    assert not _object_exists(moto, "results", "out/stalled.mp4")


# ----------------------------------------------------------------------------- downloads that reset


class _Resetter(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args) -> None:
        pass

    def _rst(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        body = PORTRAIT.read_bytes()
        if self.path.startswith("/reset-before") and (self.path.endswith("always") or n <= 2):
            return self._rst()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/reset-mid") and (self.path.endswith("always") or n <= 2):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            return self._rst()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def resetter():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Resetter)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _dl_policy(**kw) -> FetchPolicy:
    return FetchPolicy(allow_http=True, net=NetPolicy(allow=("127.0.0.1",)), backoff_s=0.05, **kw)


@pytest.mark.parametrize("where", ["reset-before", "reset-mid"])
def test_download_resets_are_retried(resetter, tmp_path, where):
    got = fetch_media(f"{resetter}/{where}-{uuid.uuid4().hex}", tmp_path, _dl_policy(attempts=3), "image")
    assert got.path.read_bytes() == PORTRAIT.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [got.path.name]


@pytest.mark.parametrize("where", ["reset-before", "reset-mid"])
def test_download_that_always_resets_fails_cleanly(resetter, tmp_path, where):
    with pytest.raises(JobError) as info:
        fetch_media(f"{resetter}/{where}-{uuid.uuid4().hex}-always", tmp_path, _dl_policy(attempts=3), "image")
    assert info.value.code is ErrorCode.E_DOWNLOAD_FAILED and "3 attempt" in info.value.message
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- full disk


@contextmanager
def tiny_disk(where: Path, size_kib: int):
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)], capture_output=True, text=True
    )
    if res.returncode != 0:  # an unprivileged sandbox: the fault cannot be staged here, say so loudly
        pytest.skip(f"cannot mount a tmpfs to fill (needs root with CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """Ballast so that only `leave_bytes` stay free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return ballast


@pytest.fixture()
def disk_ctx(tmp_path, make_ctx):
    with tiny_disk(tmp_path / "disk", 1024) as disk:
        ctx = make_ctx(tmp_path, f"server.work_dir={disk / 'work'}")
        ctx.engine.get()
        (disk / "work").mkdir(exist_ok=True)
        yield ctx, disk


def _expect(ctx, payload, code: ErrorCode) -> JobError:
    from worker.job import run_job

    with pytest.raises(JobError) as info:
        run_job(f"disk-{uuid.uuid4().hex[:6]}", payload, ctx, lambda _p: None)
    assert info.value.code is code, info.value.to_error_string()
    return info.value


def test_full_disk_during_download_is_e_download_failed(disk_ctx):
    ctx, disk = disk_ctx
    ballast = _fill(disk, 40 * 1024)  # less than the 113 KiB portrait
    err = _expect(ctx, tiny_clip_payload(), ErrorCode.E_DOWNLOAD_FAILED)
    assert "disk is full" in err.message
    assert list((disk / "work").iterdir()) == []
    ballast.unlink()


def test_full_disk_during_mux_is_e_ffmpeg_with_no_half_written_mp4(disk_ctx, tmp_path):
    from worker.job import run_job

    ctx, disk = disk_ctx
    inputs = PORTRAIT.stat().st_size + SPEECH.stat().st_size
    ballast = _fill(disk, inputs + 24 * 1024)  # the inputs fit, a 3 s video does not
    payload = tiny_clip_payload(frame_num=81, motion_frame=9)
    _expect(ctx, payload, ErrorCode.E_FFMPEG)
    assert list((disk / "work").iterdir()) == []  # no .tmp.mp4 or inputs left behind
    assert not list((tmp_path / "outputs").rglob("*.mp4"))
    ballast.unlink()
    out = run_job("after-disk-full", payload, ctx, lambda _p: None)  # space is back: the next job runs
    assert out["num_frames"] == 81


# ----------------------------------------------------------------------------- OOM through the handler


def test_engine_oom_is_e_oom_with_refresh_then_the_next_job_runs(tmp_path, make_ctx):
    import worker.handler as handler_mod

    ctx = make_ctx(tmp_path, "server.fault=oom@step")
    old = handler_mod._CTX
    handler_mod._CTX = ctx  # the handler's worker context, built from this config
    try:
        first = handler_mod.handler({"id": "oom-1", "input": tiny_clip_payload()})
        err = json.loads(first["error"])
        assert err["code"] == "E_OOM" and first.get("refresh_worker") is True and err["hint"]
        second = handler_mod.handler({"id": "oom-2", "input": tiny_clip_payload()})
        assert "error" not in second and second["num_frames"] == 5
    finally:
        handler_mod._CTX = old
    assert list((tmp_path / "work").iterdir()) == []
