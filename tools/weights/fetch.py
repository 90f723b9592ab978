"""Fetch a model variant's files from the Hugging Face Hub into a folder (the volume or an image layer).

The file list per variant is the `weights:` list of `conf/model/<variant>.yaml`, composed through
the same config code the worker uses, with `server.volume_root` pointed at the destination. So
the folder that `fetch` fills is exactly where the worker will look when the same folder is
mounted as its volume. huggingface_hub lists the files (one commit per source) and builds the URLs and
auth headers; the bytes come through our own ranged GETs, because huggingface_hub (2.x) deletes a
partial download when it fails, and a 65 GB fetch must survive an interrupted build or session:
each file grows in `<name>.partial` and the next run continues it with a Range request. The
sha256 of every LFS file is checked before it takes its final name, and a manifest (size +
sha256) is written at the destination for `weights verify`.
"""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tools.weights.manifest import MANIFEST_NAME, FileEntry, Manifest, rel, sha256_file


@dataclass(frozen=True)
class Source:
    repo: str
    local_dir: Path
    revision: str | None
    files: tuple[str, ...]


def _model_conf(model: str, dest: Path | str, conf_dir: str | None):
    from configuration import compose_config

    # The variant's own defaults under `dest`: path overrides meant for a running worker do not apply.
    env = {k: v for k, v in os.environ.items() if k not in {"CKPT_DIR", "INFINITETALK_DIR", "WAV2VEC_DIR", "QUANT_DIR"}}
    env["INFINITETALK_VOLUME_ROOT"] = str(Path(dest).resolve())
    env.pop("INFINITETALK_MODEL", None)
    return compose_config([f"model={model}"], env=env, conf_dir=conf_dir).model


def model_paths(model: str, dest: Path | str, *, conf_dir: str | None = None) -> tuple[Path, Path]:
    """(ckpt_dir, adapter file) of a variant installed under `dest`, as the worker would resolve them."""
    m = _model_conf(model, dest, conf_dir)
    return Path(m.ckpt_dir), Path(m.infinitetalk_file)


def plan(model: str, dest: Path | str, *, conf_dir: str | None = None) -> list[Source]:
    """The sources of one model variant, with local folders resolved under `dest`."""
    cfg_model = _model_conf(model, dest, conf_dir)
    return [
        Source(repo=s.repo, local_dir=Path(s.local_dir), revision=s.revision, files=tuple(s.files))
        for s in cfg_model.weights
    ]


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None  # LFS files only; small git files have none


def list_remote(api, src: Source, token: str | None) -> tuple[str, list[RemoteFile]]:
    """(commit, files matching the source's patterns); every file then comes from that one commit."""
    commit = api.repo_info(src.repo, revision=src.revision, token=token).sha
    found: list[RemoteFile] = []
    for f in api.list_repo_tree(src.repo, recursive=True, revision=commit, token=token):
        if not hasattr(f, "size") or not any(fnmatch.fnmatch(f.path, pat) for pat in src.files):
            continue
        lfs = getattr(f, "lfs", None)
        found.append(RemoteFile(f.path, int(f.size), getattr(lfs, "sha256", None) if lfs is not None else None))
    missing = [pat for pat in src.files if not any(fnmatch.fnmatch(r.name, pat) for r in found)]
    if missing:
        raise FileNotFoundError(f"{src.repo}@{src.revision or 'main'} has no file matching {missing[0]!r}")
    return commit, sorted(found, key=lambda r: r.name)


def download(
    client,
    url: str,
    path: Path,
    remote: RemoteFile,
    *,
    headers: dict[str, str],
    commit: str,
    attempts: int = 5,
) -> int:
    """Download one file to `path`, resuming `<path>.partial` (kept across runs, tied to the commit
    in `<path>.partial.commit`); returns the bytes transferred. The sha256 is checked before the
    rename, so a file at its final name is always whole."""
    import hashlib

    import httpx

    partial = path.with_name(path.name + ".partial")
    stamp = path.with_name(path.name + ".partial.commit")
    path.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists() and (not stamp.is_file() or stamp.read_text() != commit):
        partial.unlink()  # bytes of another revision cannot be continued
    stamp.write_text(commit)
    sent = 0
    for attempt in range(attempts):
        have = partial.stat().st_size if partial.exists() else 0
        if have > remote.size:
            partial.unlink()
            have = 0
        if have < remote.size:
            req = dict(headers)
            if have:
                req["Range"] = f"bytes={have}-"
            try:
                with client.stream("GET", url, headers=req) as resp:
                    if resp.status_code == 416:
                        partial.unlink()
                        continue
                    resp.raise_for_status()
                    mode = "ab"
                    if have and resp.status_code == 200:  # the server ignored the range: start over
                        mode = "wb"
                    with open(partial, mode) as f:
                        for chunk in resp.iter_bytes():  # as received: a cut keeps every byte that arrived
                            f.write(chunk)
                            sent += len(chunk)
            except (httpx.TransportError, httpx.RemoteProtocolError):
                if attempt == attempts - 1:
                    raise
                continue
        if partial.stat().st_size != remote.size:
            continue
        if remote.sha256:
            h = hashlib.sha256()
            with open(partial, "rb") as f:
                while block := f.read(8 * 2**20):
                    h.update(block)
            if h.hexdigest() != remote.sha256:
                partial.unlink()
                raise OSError(f"{path}: sha256 {h.hexdigest()} does not match the Hub's {remote.sha256}")
        os.replace(partial, path)
        stamp.unlink(missing_ok=True)
        return sent
    raise OSError(f"{path}: incomplete after {attempts} attempts ({partial.stat().st_size} of {remote.size} bytes)")


def fetch(
    sources: list[Source],
    dest: Path | str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    max_workers: int = 8,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Download every source (resuming partial files), then write `<dest>/weights-manifest.json`.

    A file already present with the manifest's size is not fetched again.
    """
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    dest = Path(dest).resolve()
    token = token or os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=endpoint, token=token)
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"
    manifest_path = dest / MANIFEST_NAME
    manifest = Manifest.load(manifest_path) if manifest_path.is_file() else Manifest()
    timeout = httpx.Timeout(120.0, connect=15.0)
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        for src in sources:
            local = src.local_dir.resolve()
            try:
                local.relative_to(dest)
            except ValueError as exc:
                raise ValueError(f"{src.repo}: local_dir {local} lies outside the destination {dest}") from exc
            commit, remotes = list_remote(api, src, token)
            if progress:
                progress(f"{src.repo}@{src.revision or 'main'} ({commit[:12]}): {len(remotes)} files -> {local}")
            known = manifest.by_path()

            def one(remote: RemoteFile) -> FileEntry:
                path = local / remote.name
                key = rel(dest, path)
                entry = known.get(key)
                if (
                    path.is_file()
                    and path.stat().st_size == remote.size
                    and entry is not None
                    and entry.size == remote.size
                    and (remote.sha256 is None or entry.sha256 == remote.sha256)
                ):
                    return entry
                url = hf_hub_url(src.repo, remote.name, revision=commit, endpoint=endpoint)
                download(client, url, path, remote, headers=headers, commit=commit)
                if progress:
                    progress(f"  {remote.name}: {remote.size / 1e9:.3f} GB")
                return FileEntry(key, remote.size, remote.sha256 or sha256_file(path))

            with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
                for entry in pool.map(one, remotes):
                    manifest.add(entry)
            manifest.save(manifest_path)
    return manifest
