"""fetch: the conf/ file lists per variant, and downloads through huggingface_hub from a local
stand-in of the Hub's HTTP API (repo info with LFS hashes, HEAD + ranged GET on resolve URLs),
including a download cut off midway and resumed from where it stopped."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tools.weights.fetch import Source, fetch, model_paths, plan
from tools.weights.manifest import MANIFEST_NAME, Manifest
from tools.weights.verify import verify

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_plan_lists_each_variant_under_the_destination(tmp_path):
    single = plan("infinitetalk_single", tmp_path)
    repos = [s.repo for s in single]
    assert repos[:2] == ["Wan-AI/Wan2.1-I2V-14B-480P", "MeiGen-AI/InfiniteTalk"]
    base = single[0]
    assert base.local_dir == tmp_path.resolve() / "weights" / "Wan2.1-I2V-14B-480P"
    assert sum(f.startswith("diffusion_pytorch_model-") for f in base.files) == 7
    assert single[1].files == ("single/infinitetalk.safetensors",)
    assert plan("infinitetalk_multi", tmp_path)[1].files == ("multi/infinitetalk.safetensors",)
    fp8 = plan("infinitetalk_single_fp8", tmp_path)
    assert "quant_models/infinitetalk_single_fp8.safetensors" in fp8[1].files
    assert not any(f.startswith("diffusion_pytorch_model-") for f in fp8[0].files)
    assert any(s.revision == "refs/pr/1" for s in single)
    assert plan("tiny", tmp_path) == []
    ckpt, adapter = model_paths("infinitetalk_multi", tmp_path)
    assert adapter == tmp_path.resolve() / "weights" / "InfiniteTalk" / "multi" / "infinitetalk.safetensors"
    assert ckpt == base.local_dir


def test_plan_ignores_a_running_workers_path_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", "/somewhere/else")
    assert plan("infinitetalk_single", tmp_path)[0].local_dir == tmp_path.resolve() / "weights" / "Wan2.1-I2V-14B-480P"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], lfs: set[str]) -> None:
        self.repos = repos
        self.lfs = lfs
        self.cut_once: set[str] = set()  # files whose first GET stops halfway
        self.ranges: list[tuple[str, int]] = []
        self.sent = 0
        self.log: list[tuple[str, str, str | None]] = []
        self.lfs_override: dict[str, str] = {}  # a wrong sha256 the listing announces
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._serve(body=True)

            def do_HEAD(self):
                self._serve(body=False)

            def _json(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, body: bool):
                path = unquote(urlsplit(self.path).path)
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo = "/".join(parts[2:4])
                    files = hub.repos.get(repo)
                    if files is None:
                        return self._missing()
                    if len(parts) > 4 and parts[4] == "tree":  # recursive listing, one page
                        entries = []
                        for name, data in sorted(files.items()):
                            e = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                            if name in hub.lfs:
                                sha = hub.lfs_override.get(name) or hashlib.sha256(data).hexdigest()
                                e["lfs"] = {"oid": sha, "sha256": sha, "size": len(data), "pointerSize": 134}
                            entries.append(e)
                        return self._json(entries)
                    siblings = []
                    for name, data in sorted(files.items()):
                        sib = {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
                        if name in hub.lfs:
                            sib["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                        siblings.append(sib)
                    return self._json({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings, "private": False})
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = "/".join(parts[:2])
                    # the revision may itself hold slashes (refs/pr/1): try the longest file name that exists
                    files = hub.repos.get(repo, {})
                    rest = parts[3:]
                    name = next(("/".join(rest[i:]) for i in range(1, len(rest)) if "/".join(rest[i:]) in files), None)
                    if name is None:
                        return self._missing()
                    data = files[name]
                    etag = hashlib.sha256(data).hexdigest() if name in hub.lfs else hashlib.sha1(data).hexdigest()
                    start = 0
                    rng = self.headers.get("Range")
                    hub.log.append((self.command, name, rng))
                    if rng and rng.startswith("bytes="):
                        start = int(rng[6:].split("-")[0] or 0)
                        hub.ranges.append((name, start))
                    chunk = data[start:]
                    self.send_response(206 if start else 200)
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("ETag", f'"{etag}"')
                    self.send_header("Content-Length", str(len(chunk)))
                    if start:
                        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    self.end_headers()
                    if not body:
                        return
                    if name in hub.cut_once and start == 0:
                        hub.cut_once.discard(name)
                        half = chunk[: len(chunk) // 2]
                        self.wfile.write(half)
                        self.wfile.flush()
                        hub.sent += len(half)
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(chunk)
                    hub.sent += len(chunk)
                    return
                self._missing()

            def _missing(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hub():
    big = os.urandom(3 * 2**20 + 17)
    h = FakeHub(
        {
            "acme/base": {"config.json": b'{"dim": 64}', "shards/a.bin": big, "shards/b.bin": b"b" * 1000, "other.bin": b"no"},
            "acme/audio": {"model.bin": b"w" * 5000},
        },
        lfs={"shards/a.bin", "shards/b.bin", "model.bin"},
    )
    yield h
    h.close()


def _sources(dest: Path) -> list[Source]:
    return [
        Source("acme/base", dest / "weights" / "base", None, ("config.json", "shards/*")),
        Source("acme/audio", dest / "weights" / "audio", "refs/pr/1", ("model.bin",)),
    ]


def test_fetch_downloads_the_listed_files_and_writes_a_manifest(hub, tmp_path):
    dest = tmp_path / "vol"
    manifest = fetch(_sources(dest), dest, endpoint=hub.url, token="hf_test")
    paths = [f.path for f in manifest.files]
    assert paths == [
        "weights/audio/model.bin",
        "weights/base/config.json",
        "weights/base/shards/a.bin",
        "weights/base/shards/b.bin",
    ]
    assert not (dest / "weights" / "base" / "other.bin").exists()
    a = manifest.by_path()["weights/base/shards/a.bin"]
    assert a.sha256 == hashlib.sha256(hub.repos["acme/base"]["shards/a.bin"]).hexdigest()
    assert Manifest.load(dest / MANIFEST_NAME) == manifest
    assert verify(dest) == []
    sent = hub.sent
    fetch(_sources(dest), dest, endpoint=hub.url, token="hf_test")  # complete files are not fetched again
    assert hub.sent == sent


def test_a_download_cut_off_midway_resumes_from_where_it_stopped(hub, tmp_path):
    dest = tmp_path / "vol"
    big = hub.repos["acme/base"]["shards/a.bin"]
    hub.cut_once.add("shards/a.bin")
    fetch(_sources(dest), dest, endpoint=hub.url, token="hf_test")
    assert (dest / "weights" / "base" / "shards" / "a.bin").read_bytes() == big
    assert any(name == "shards/a.bin" and start > 0 for name, start in hub.ranges), hub.log
    assert hub.sent < len(big) * 1.6  # the first half was not sent twice
    assert verify(dest) == []
    assert not list(dest.rglob("*.partial"))


def test_a_partial_file_left_by_an_earlier_run_is_continued(hub, tmp_path):
    from tools.weights.fetch import list_remote

    from huggingface_hub import HfApi

    dest = tmp_path / "vol"
    big = hub.repos["acme/base"]["shards/a.bin"]
    commit, _ = list_remote(HfApi(endpoint=hub.url), _sources(dest)[0], None)
    target = dest / "weights" / "base" / "shards" / "a.bin"
    target.parent.mkdir(parents=True)
    (target.parent / "a.bin.partial").write_bytes(big[:1_000_000])
    (target.parent / "a.bin.partial.commit").write_text(commit)
    fetch(_sources(dest), dest, endpoint=hub.url)
    assert target.read_bytes() == big
    assert ("shards/a.bin", 1_000_000) in hub.ranges


def test_a_corrupt_download_never_takes_the_final_name(hub, tmp_path):
    dest = tmp_path / "vol"
    hub.lfs_override = {"shards/b.bin": "0" * 64}
    with pytest.raises(OSError, match="sha256"):
        fetch(_sources(dest), dest, endpoint=hub.url)
    assert not (dest / "weights" / "base" / "shards" / "b.bin").exists()


def test_a_listed_file_the_hub_lacks_is_named(hub, tmp_path):
    dest = tmp_path / "vol"
    src = [Source("acme/base", dest / "weights" / "base", None, ("config.json", "missing.safetensors"))]
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        fetch(src, dest, endpoint=hub.url, token="hf_test")
