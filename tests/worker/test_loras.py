"""A job's own LoRAs (worker/loras.py): refs through the media guard, the content-hash cache, and whole jobs on the
tiny model with `loras` (errors name loras[i]; a second job reuses the cached file; timings and progress)."""
from __future__ import annotations

import io
import os
import pickle
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from contract.errors import ErrorCode, JobError
from contract.job import LoraSpec
from testkit.tiny import write_tiny_lora
from worker.inputs.fetch import FetchPolicy
from worker.inputs.netguard import NetPolicy
from worker.loras import IN_USE_S, LoraCache, fetch_lora, sha256_file
from tests.worker.test_job import EXAMPLES, example, make_ctx, run

GiB = 1024**3


class _Files(BaseHTTPRequestHandler):
    """Serves `files` by path and counts every GET (the cache test counts downloads on a real socket)."""

    files: dict[str, bytes] = {}
    hits: Counter = Counter()

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        self.hits[path] += 1
        body = self.files.get(path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture()
def server():
    _Files.files, _Files.hits = {}, Counter()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Files
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def lora_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("l") / "style.safetensors"
    write_tiny_lora(path, "fusionx", 101)
    return path.read_bytes()


def spec(ref: str, scale: float = 1.0) -> LoraSpec:
    return LoraSpec.model_validate({"ref": ref, "scale": scale}, context={"allow_http": True})


def policy(tmp_path: Path, **kw) -> FetchPolicy:
    base = dict(allow_http=True, net=NetPolicy(allow=("127.0.0.1/32",)), backoff_s=0.01, attempts=1,
                volume_roots=(tmp_path / "volume",))
    base.update(kw)
    return FetchPolicy(**base)


def cache(tmp_path: Path, max_bytes: int = GiB, ttl: float = 3600.0) -> LoraCache:
    return LoraCache(tmp_path / "cache", max_bytes, ttl)


def no_partials(*folders: Path) -> bool:
    return not any(p.name.endswith(".part") for d in folders if d.exists() for p in d.rglob("*"))


# ---------------------------------------------------------------- fetch and cache


def test_a_url_is_downloaded_once_then_served_from_the_cache(server, tmp_path, lora_bytes):
    url, files = server
    files.files["/style.safetensors"] = lora_bytes
    c = cache(tmp_path)
    one = spec(url + "/style.safetensors", 0.5)
    first = fetch_lora(0, one, c, policy(tmp_path), None, tmp_path / "job1")
    second = fetch_lora(1, one, c, policy(tmp_path), None, tmp_path / "job2")
    assert files.hits["/style.safetensors"] == 1  # the second job did not download
    assert (first.cached, second.cached) == (False, True) and first.path == second.path
    assert first.sha256 == second.sha256 == sha256_file(first.path) and first.path.read_bytes() == lora_bytes
    assert first.path == c.blob(first.sha256) and second.scale == 0.5 and second.index == 1
    assert no_partials(c.root, tmp_path / "job1")


def test_the_same_bytes_under_another_url_are_stored_once(server, tmp_path, lora_bytes):
    url, files = server
    files.files["/a.safetensors"] = files.files["/b.safetensors"] = lora_bytes
    c = cache(tmp_path)
    a = fetch_lora(0, spec(url + "/a.safetensors"), c, policy(tmp_path), None, tmp_path / "j")
    b = fetch_lora(0, spec(url + "/b.safetensors?X-Amz-Signature=s1"), c, policy(tmp_path), None, tmp_path / "j")
    assert a.path == b.path and len(list(c.blobs.glob("*.safetensors"))) == 1
    assert not any(b"s1" in p.read_bytes() or "s1" in p.name for p in c.refs.iterdir())  # refs are hashed


def test_a_url_ref_past_its_ttl_is_downloaded_again(server, tmp_path, lora_bytes):
    url, files = server
    files.files["/style.safetensors"] = lora_bytes
    c = cache(tmp_path, ttl=60.0)
    one = spec(url + "/style.safetensors")
    fetch_lora(0, one, c, policy(tmp_path), None, tmp_path / "j")
    for ref_file in c.refs.iterdir():
        os.utime(ref_file, (time.time() - 120, time.time() - 120))
    again = fetch_lora(0, one, c, policy(tmp_path), None, tmp_path / "j")
    assert files.hits["/style.safetensors"] == 2 and not again.cached


def test_a_volume_file_is_copied_once_and_a_changed_file_is_read_again(tmp_path, lora_bytes):
    vol = tmp_path / "volume"
    vol.mkdir()
    src = vol / "style.safetensors"
    src.write_bytes(lora_bytes)
    c = cache(tmp_path)
    first = fetch_lora(0, spec(str(src)), c, policy(tmp_path), None, tmp_path / "j")
    os.utime(first.path, (1_000_000, 1_000_000))
    second = fetch_lora(0, spec(str(src)), c, policy(tmp_path), None, tmp_path / "j")
    assert second.cached and second.path.stat().st_mtime > 1_000_000  # taken from the cache, touched as used
    other = tmp_path / "other.safetensors"
    write_tiny_lora(other, "lightx2v", 7)
    src.write_bytes(other.read_bytes())
    third = fetch_lora(0, spec(str(src)), c, policy(tmp_path), None, tmp_path / "j")
    assert not third.cached and third.sha256 != first.sha256


def test_a_name_is_looked_up_in_the_lora_folder_only(tmp_path, lora_bytes):
    loras = tmp_path / "loras"
    (loras / "sub").mkdir(parents=True)
    (loras / "sub" / "style.safetensors").write_bytes(lora_bytes)
    (tmp_path / "volume").mkdir()
    (tmp_path / "volume" / "x.safetensors").write_bytes(lora_bytes)
    got = fetch_lora(0, spec("sub/style.safetensors"), cache(tmp_path), policy(tmp_path), str(loras), tmp_path / "j")
    assert got.path.read_bytes() == lora_bytes
    for ref in ("../volume/x.safetensors", "sub/../../volume/x.safetensors"):
        with pytest.raises(JobError) as info:
            fetch_lora(0, spec(ref), cache(tmp_path), policy(tmp_path), str(loras), tmp_path / "j")
        assert info.value.code is ErrorCode.E_INPUT_VALIDATION and "'..'" in info.value.message
    with pytest.raises(JobError) as info:  # no LoRA folder configured: a bare name means nothing
        fetch_lora(0, spec("style.safetensors"), cache(tmp_path), policy(tmp_path), None, tmp_path / "j")
    assert info.value.code is ErrorCode.E_INPUT_VALIDATION


def _pickled() -> bytes:
    buf = io.BytesIO()
    torch.save({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 64)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("name, body, words", [
    ("pickle.safetensors", _pickled(), "not a safetensors file"),
    ("raw.safetensors", pickle.dumps({"a": 1}), "not a safetensors file"),
    ("text.safetensors", b"hello, this is not a LoRA at all" * 4, "not a safetensors file"),
    ("big.safetensors", None, "exceeds the lora limit"),
])
def test_bad_files_are_refused_before_the_cache(server, tmp_path, lora_bytes, name, body, words):
    url, files = server
    files.files["/" + name] = body if body is not None else lora_bytes
    c = cache(tmp_path)
    with pytest.raises(JobError) as info:
        fetch_lora(0, spec(f"{url}/{name}"), c, policy(tmp_path, max_bytes={"lora": 4096}), None, tmp_path / "j")
    assert info.value.code is ErrorCode.E_INPUT_VALIDATION and words in info.value.message, info.value.message
    assert not c.blobs.exists() and no_partials(tmp_path / "j")


@pytest.mark.parametrize("ref", ["https://10.1.2.3/l.safetensors", "https://169.254.169.254/latest/x",
                                 "/etc/passwd", "s3://bucket/loras/x.safetensors"])
def test_refs_the_guard_refuses_are_refused_for_loras_too(tmp_path, ref):
    with pytest.raises(JobError) as info:
        fetch_lora(0, spec(ref), cache(tmp_path), policy(tmp_path, net=NetPolicy()), None, tmp_path / "j")
    assert info.value.code is ErrorCode.E_INPUT_VALIDATION, info.value.message


def test_s3_refs_inside_the_input_prefixes_are_fetched_once_and_others_refused(moto_s3, tmp_path, lora_bytes):
    client = moto_s3.client()
    client.create_bucket(Bucket="results")
    client.put_object(Bucket="results", Key="inputs/loras/style.safetensors", Body=lora_bytes)
    client.put_object(Bucket="results", Key="infinitetalk/job.safetensors", Body=lora_bytes)
    pol = policy(tmp_path, s3=moto_s3.settings(bucket="results"), s3_allowed_prefixes=("results/inputs/",))
    c = cache(tmp_path)
    first = fetch_lora(0, spec("s3://results/inputs/loras/style.safetensors"), c, pol, None, tmp_path / "j")
    client.delete_object(Bucket="results", Key="inputs/loras/style.safetensors")  # a second fetch would now fail
    second = fetch_lora(0, spec("s3://results/inputs/loras/style.safetensors"), c, pol, None, tmp_path / "j")
    assert (first.cached, second.cached) == (False, True) and second.path.read_bytes() == lora_bytes
    with pytest.raises(JobError) as info:  # the results prefix is not an input, whatever the file
        fetch_lora(0, spec("s3://results/infinitetalk/job.safetensors"), c, pol, None, tmp_path / "j")
    assert info.value.code is ErrorCode.E_INPUT_VALIDATION and info.value.details["reason"] == "s3_not_allowed"


def test_a_data_uri_lora_is_decoded_and_cached(tmp_path, lora_bytes):
    import base64

    ref = "data:application/octet-stream;base64," + base64.b64encode(lora_bytes).decode()
    c = cache(tmp_path)
    first = fetch_lora(0, spec(ref), c, policy(tmp_path), None, tmp_path / "j")
    second = fetch_lora(0, spec(ref), c, policy(tmp_path), None, tmp_path / "j")
    assert first.path.read_bytes() == lora_bytes and second.cached and first.sha256 == second.sha256


def test_eviction_removes_the_least_recently_used_files_not_recent_ones(tmp_path):
    c = cache(tmp_path, max_bytes=2500)
    c.blobs.mkdir(parents=True)
    now = time.time()
    for i, age in enumerate([5 * IN_USE_S, 3 * IN_USE_S, 2 * IN_USE_S, 0]):
        p = c.blob(f"{i:064x}")
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - age, now - age))
    removed = c.evict()
    assert removed == [f"{0:064x}", f"{1:064x}"]  # oldest first, until within 2500 bytes
    c.max_bytes = 0
    assert c.evict(keep={f"{2:064x}"}) == []  # the kept one and the one used just now stay
    stale, fresh = c.blobs / f".{0:064x}.dead.part", c.blobs / f".{0:064x}.live.part"
    stale.write_bytes(b"half"), fresh.write_bytes(b"half")
    os.utime(stale, (now - 2 * IN_USE_S, now - 2 * IN_USE_S))
    c.evict()
    assert not stale.exists() and fresh.exists()  # a killed worker's leftovers go; a running write stays


@settings(max_examples=25, deadline=None)
@given(key=st.text(min_size=1, max_size=300))
def test_remembered_refs_round_trip_and_write_nothing_partial(tmp_path_factory, key):
    c = cache(tmp_path_factory.mktemp("c"))
    sha = "ab" * 32
    assert c.recall(key, None) is None
    c.remember(key, sha)
    assert c.recall(key, None) == sha and c.recall(key + "x", None) is None
    assert no_partials(c.root) and all(len(p.name) == 64 for p in c.refs.iterdir())


# ---------------------------------------------------------------- whole jobs on the tiny model


@pytest.fixture(scope="module")
def job_ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lorajob")
    return make_ctx(tmp, tmp_path_factory.mktemp("cache"), "server.allow_http=true",
                    "server.allow_loopback_hosts=[127.0.0.1]", f"server.lora_cache_dir={tmp / 'lora-cache'}")


def test_a_job_with_a_lora_reports_it_and_a_second_job_reuses_the_cached_file(server, job_ctx, lora_bytes):
    url, files = server
    files.files["/style.safetensors"] = lora_bytes
    payload = example("single_image.json") | {"sampler": "turbo", "seed": 5, "max_duration_s": 1.0,
                                              "loras": [{"ref": url + "/style.safetensors", "scale": 1.5}]}
    first, seen = run(job_ctx, payload, "lora-a")
    second, _ = run(job_ctx, payload, "lora-b")
    assert files.hits["/style.safetensors"] == 1
    assert [lo["cached"] for lo in (first["config"]["loras"][0], second["config"]["loras"][0])] == [False, True]
    assert first["config"]["loras"][0]["sha256"] == second["config"]["loras"][0]["sha256"]
    assert {"loras", "lora_merge", "lora_unmerge"} <= set(first["timings_s"])
    messages = [s["message"] for s in seen]
    assert any("loading LoRAs (1)" in m for m in messages)  # the load stage says so (per-file updates are throttled)
    plain, _ = run(job_ctx, example("single_image.json") | {"sampler": "turbo", "max_duration_s": 1.0}, "lora-c")
    assert "loras" not in plain["config"] and "lora_merge" not in plain["timings_s"]


def _job_error(ctx, payload) -> JobError:
    with pytest.raises(JobError) as info:
        run(ctx, payload)
    return info.value


def test_a_file_for_another_model_names_loras_i_and_the_key(job_ctx, tmp_path):
    from tests.contract.test_errors import assert_human

    bad = EXAMPLES / f".lora-{tmp_path.name}.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 64),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 2)}, str(bad))
    shapes = EXAMPLES / f".lora-shape-{tmp_path.name}.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 65),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(64, 2)}, str(shapes))
    good = EXAMPLES / f".lora-good-{tmp_path.name}.safetensors"
    write_tiny_lora(good, "lightx2v", 9)
    try:
        base = example("single_image.json") | {"sampler": "turbo", "max_duration_s": 1.0}
        err = _job_error(job_ctx, base | {"loras": [{"ref": str(good)}, {"ref": str(bad)}]})
        assert err.code is ErrorCode.E_INPUT_VALIDATION and err.details["field"] == "loras[1]"
        assert err.details["key"] == "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
        assert "lora_unet_down_blocks_0_attentions_0_proj_in" in err.message
        assert_human(err)
        err = _job_error(job_ctx, base | {"loras": [{"ref": str(shapes)}]})
        assert err.code is ErrorCode.E_INPUT_VALIDATION and err.details["field"] == "loras[0]"
        assert "blocks.0.self_attn.q.lora_down.weight" in err.message and "does not fit" in err.message
        err = _job_error(job_ctx, base | {"loras": [{"ref": "/etc/passwd"}]})
        assert err.code is ErrorCode.E_INPUT_VALIDATION and err.details["field"] == "loras[0]"
        assert err.message.startswith("loras[0]: ")
        assert_human(err)
    finally:
        for p in (bad, shapes, good):
            p.unlink(missing_ok=True)


def test_a_cancelled_lora_job_leaves_the_dit_bit_identical(job_ctx, tmp_path):
    from worker.job import run_job

    good = EXAMPLES / f".lora-cancel-{tmp_path.name}.safetensors"
    write_tiny_lora(good, "fusionx", 11)
    try:
        engine = job_ctx.engine.get()
        turbo = job_ctx.cfg.sampler_presets["turbo"]
        engine.use_lora(turbo.lora_file, turbo.lora_scale)  # the job's preset, as it will ask for it
        dit = engine.dit
        before = {k: v.clone() for k, v in dit.state_dict().items()}
        steps = []

        def cancel_after_a_step() -> bool:  # the LoRA is merged by then: sampling has begun
            steps.append(1)
            return len(steps) > 2

        payload = example("single_image.json") | {"sampler": "turbo", "loras": [{"ref": str(good), "scale": 2.0}]}
        with pytest.raises(JobError) as info:
            run_job("lora-cancel", payload, job_ctx, lambda _p: None, should_cancel=cancel_after_a_step)
        assert info.value.code is ErrorCode.E_CANCELLED and len(steps) > 2
        assert all(torch.equal(v, before[k]) for k, v in dit.state_dict().items())
    finally:
        good.unlink(missing_ok=True)


def test_workers_adding_the_same_file_at_once_leave_one_whole_copy(tmp_path, lora_bytes):
    """Several workers on one volume may fetch the same LoRA together: each writes its own temporary name and
    renames it into place, so the cache holds one whole file and no partial one, whoever wins."""
    c = cache(tmp_path)
    sha = __import__("hashlib").sha256(lora_bytes).hexdigest()
    sources = []
    for i in range(6):
        src = tmp_path / f"job{i}" / "l.safetensors"
        src.parent.mkdir()
        src.write_bytes(lora_bytes)
        sources.append(src)
    barrier = threading.Barrier(len(sources))
    results: list[Path] = []

    def add(src: Path) -> None:
        barrier.wait()
        results.append(c.add(src, sha))

    threads = [threading.Thread(target=add, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) == {c.blob(sha)} and c.blob(sha).read_bytes() == lora_bytes
    assert list(c.blobs.iterdir()) == [c.blob(sha)] and no_partials(c.root)
