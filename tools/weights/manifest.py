"""The weights manifest: every file of an installation with its size and sha256.

`weights fetch` writes it (hashes from the Hub's LFS metadata where the Hub has them, else computed
after download); `weights verify` checks a folder against it; `weights upload-volume` uploads it
beside the files so a worker can check its volume. Paths are relative to the manifest's folder
and use forward slashes.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "weights-manifest.json"
MANIFEST_FORMAT = "infinitetalk-weights-manifest"
# Download and upload leftovers that never belong in a manifest.
_SKIP_DIRS = {".cache", ".git", "__pycache__"}
_SKIP_SUFFIXES = (".partial", ".incomplete", ".lock")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str | None = None


@dataclass
class Manifest:
    files: list[FileEntry] = field(default_factory=list)
    format: str = MANIFEST_FORMAT
    version: int = 1

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def add(self, entry: FileEntry) -> None:
        self.files = [f for f in self.files if f.path != entry.path] + [entry]
        self.files.sort(key=lambda f: f.path)

    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps(
            {"format": self.format, "version": self.version, "files": [asdict(f) for f in self.files]}, indent=1
        )

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(self.to_json() + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable manifest: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: not a weights manifest (format {MANIFEST_FORMAT!r} expected)")
        files = [FileEntry(str(f["path"]), int(f["size"]), f.get("sha256")) for f in data.get("files", [])]
        return cls(files=sorted(files, key=lambda f: f.path), version=int(data.get("version", 1)))


def sha256_file(path: Path | str, chunk: int = 8 * 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def iter_files(root: Path | str) -> Iterable[Path]:
    """Weight files under root, in a stable order, without download leftovers or the manifest."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name == MANIFEST_NAME or name.endswith(_SKIP_SUFFIXES):
                continue
            yield Path(dirpath) / name


def rel(root: Path | str, path: Path | str) -> str:
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def build_manifest(root: Path | str, paths: Iterable[Path | str] | None = None, *, hashes: bool = True) -> Manifest:
    root = Path(root)
    m = Manifest()
    for p in paths if paths is not None else iter_files(root):
        p = root / p if not Path(p).is_absolute() else Path(p)
        m.add(FileEntry(rel(root, p), p.stat().st_size, sha256_file(p) if hashes else None))
    return m
