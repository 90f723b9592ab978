"""Fetch a model variant's files from the Hugging Face Hub into a folder (the volume or an image layer).

The file list per variant is the `weights:` list of `conf/model/<variant>.yaml`, composed through
the same config code the worker uses, with `server.volume_root` pointed at the destination. So
the folder that `fetch` fills is exactly where the worker will look when the same folder is
mounted as its volume. Downloads go through huggingface_hub into `local_dir`, which keeps partial
files under `<local_dir>/.cache/huggingface/` and resumes them on the next run; complete files are
skipped. Afterwards a manifest (size + sha256, from the Hub's LFS metadata where it has them)
is written at the destination for `weights verify`.
"""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.weights.manifest import MANIFEST_NAME, FileEntry, Manifest, rel, sha256_file


@dataclass(frozen=True)
class Source:
    repo: str
    local_dir: Path
    revision: str | None
    files: tuple[str, ...]


def _model_conf(model: str, dest: Path | str, conf_dir: str | None):
    from worker.config import compose_config

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


def _hub_entries(api, src: Source, token: str | None) -> dict[str, FileEntry]:
    """Size and sha256 of each file the Hub will serve for this source (LFS files carry a sha256)."""
    info = api.model_info(src.repo, revision=src.revision, files_metadata=True, token=token)
    out: dict[str, FileEntry] = {}
    for sib in info.siblings or []:
        if not any(fnmatch.fnmatch(sib.rfilename, pat) for pat in src.files):
            continue
        sha = None
        lfs = getattr(sib, "lfs", None)
        if lfs is not None:
            sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        out[sib.rfilename] = FileEntry(sib.rfilename, int(sib.size or 0), sha)
    return out


def fetch(
    sources: list[Source],
    dest: Path | str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    max_workers: int = 8,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Download every source (resuming partial files), then write `<dest>/weights-manifest.json`."""
    from huggingface_hub import HfApi, snapshot_download

    dest = Path(dest).resolve()
    token = token or os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=endpoint, token=token)
    manifest_path = dest / MANIFEST_NAME
    manifest = Manifest.load(manifest_path) if manifest_path.is_file() else Manifest()
    for src in sources:
        local = src.local_dir.resolve()
        try:
            local.relative_to(dest)
        except ValueError as exc:
            raise ValueError(f"{src.repo}: local_dir {local} lies outside the destination {dest}") from exc
        if progress:
            progress(f"fetching {src.repo}@{src.revision or 'main'} -> {local}")
        expected = _hub_entries(api, src, token)
        missing = [pat for pat in src.files if not any(fnmatch.fnmatch(name, pat) for name in expected)]
        if missing:
            raise FileNotFoundError(f"{src.repo}@{src.revision or 'main'} has no file matching {missing[0]!r}")
        snapshot_download(
            src.repo,
            revision=src.revision,
            local_dir=str(local),
            allow_patterns=list(src.files),
            token=token,
            endpoint=endpoint,
            max_workers=max_workers,
        )
        for name, entry in sorted(expected.items()):
            path = local / name
            size = path.stat().st_size
            if size != entry.size:
                raise OSError(f"{path}: {size} bytes after download, the Hub says {entry.size}")
            manifest.add(FileEntry(rel(dest, path), size, entry.sha256 or sha256_file(path)))
        manifest.save(manifest_path)
    return manifest
