"""Check an installation against its manifest, naming each missing, truncated or altered file.

Sizes are checked first (cheap, and the usual failure: an interrupted copy); hashes after, unless
the caller asks for sizes only. Safetensors files are also checked on their own terms, so a
truncated shard is caught even by a manifest that lists no hash for it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tools.weights.manifest import MANIFEST_NAME, Manifest, sha256_file
from tools.weights.repack import RepackError, read_header


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # missing | truncated | oversized | hash | corrupt
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.detail}"


def verify(
    root: Path | str,
    manifest: Manifest | Path | str | None = None,
    *,
    hashes: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Problem]:
    """Problems found under `root` (empty when all is well). Default manifest: `<root>/weights-manifest.json`."""
    root = Path(root)
    if manifest is None:
        manifest = root / MANIFEST_NAME
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    problems: list[Problem] = []
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file():
            problems.append(Problem(entry.path, "missing", f"expected {entry.size} bytes"))
            continue
        size = path.stat().st_size
        if size < entry.size:
            problems.append(Problem(entry.path, "truncated", f"{size} of {entry.size} bytes"))
            continue
        if size > entry.size:
            problems.append(Problem(entry.path, "oversized", f"{size} bytes, expected {entry.size}"))
            continue
        if path.suffix == ".safetensors":
            try:
                read_header(path)
            except RepackError as exc:
                problems.append(Problem(entry.path, "corrupt", str(exc)))
                continue
        if hashes and entry.sha256:
            if progress and size >= 64 * 2**20:
                progress(f"hashing {entry.path}")
            digest = sha256_file(path)
            if digest != entry.sha256:
                problems.append(Problem(entry.path, "hash", f"sha256 {digest}, expected {entry.sha256}"))
    return problems
