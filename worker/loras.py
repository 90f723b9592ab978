"""A job's own LoRAs (job field `loras`): fetched through the media guard, kept by content hash.

Why a cache: LoRA files are large (100 MB to 2 GB) and the same few are sent job after job, so each is
downloaded once per endpoint, not once per job. Every ref goes through `worker.inputs.fetch` like an
image or audio ref (the same SSRF rules, s3 prefixes, volume roots and symlink checks; the size cap is
`server.download.max_lora_bytes`; the bytes must be a whole safetensors file). A ref may also be a
name relative to the model's LoRA folder (`model.lora_dir`), which is then the only root it may
resolve under.

Cache layout (`wiring.lora_cache_dir`, on the volume when mounted): `sha256/<hex>.safetensors` holds
each file under the SHA-256 of its bytes, written to a temporary name and renamed into place (never
half-written, and two workers adding the same file race harmlessly); `refs/<sha256 of the ref>` maps a
ref to its content hash: a volume ref by real path, size, mtime and inode (a changed file is a new
entry), a URL, s3 or data ref for `server.lora_ref_ttl_s` (a URL whose content changes should change
its name, or the next download after the TTL picks it up). Presigned URLs differ per signature, so
they hit the cache only by content: downloaded again, not stored again. Files past
`server.lora_cache_max_bytes` are removed least recently used first (using a file touches it); a
file used in the last `IN_USE_S` seconds is never removed, so another worker's running job keeps it.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from contract.errors import ErrorCode, JobError
from contract.job import LoraSpec, media_ref_kind
from worker.inputs.fetch import FetchPolicy, fetch_media, vet_volume_path

IN_USE_S = 3600.0
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class JobLora:
    """One `loras[index]` entry ready for the engine: a safetensors file in the cache."""

    index: int
    path: Path
    scale: float
    sha256: str
    size: int
    cached: bool  # True: found in the cache, nothing downloaded or copied for this job


class LoraCache:
    """Files by content hash plus ref -> hash entries under `root` (see the module docstring)."""

    def __init__(self, root: Path, max_bytes: int, ref_ttl_s: float) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.ref_ttl_s = float(ref_ttl_s)
        self.blobs = self.root / "sha256"
        self.refs = self.root / "refs"

    def blob(self, sha: str) -> Path:
        return self.blobs / f"{sha}.safetensors"

    def find(self, sha: str) -> Path | None:
        """The cached file with this content hash, touched as used; None when absent."""
        path = self.blob(sha)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def add(self, src: Path, sha: str) -> Path:
        """Put `src` (a fetched file in the job's folder) into the cache under `sha`, atomically."""
        final = self.blob(sha)
        if self.find(sha) is not None:
            return final
        self.blobs.mkdir(parents=True, exist_ok=True)
        stage = self.blobs / f".{sha}.{uuid.uuid4().hex[:12]}.part"
        try:
            try:
                os.replace(src, stage)  # same file system: a rename, no copy
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(src, stage)
            os.replace(stage, final)
        finally:
            stage.unlink(missing_ok=True)
        self.evict(keep={sha})
        return final

    def _ref_file(self, key: str) -> Path:
        return self.refs / hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def recall(self, key: str, ttl_s: float | None) -> str | None:
        """The content hash remembered for `key` (None past `ttl_s` seconds, or when unknown)."""
        path = self._ref_file(key)
        try:
            if ttl_s is not None and time.time() - path.stat().st_mtime > ttl_s:
                return None
            sha = path.read_text().strip()
        except (FileNotFoundError, OSError, UnicodeDecodeError):
            return None
        return sha if len(sha) == 64 and set(sha) <= _HEX else None

    def remember(self, key: str, sha: str) -> None:
        self.refs.mkdir(parents=True, exist_ok=True)
        final = self._ref_file(key)
        stage = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            stage.write_text(sha + "\n")
            os.replace(stage, final)
        finally:
            stage.unlink(missing_ok=True)

    def evict(self, keep: set[str] = frozenset()) -> list[str]:
        """Remove least recently used files until the cache is within max_bytes; returns the hashes removed.
        Temporary files a killed worker left behind go once they are older than IN_USE_S."""
        now = time.time()
        for folder in (self.blobs, self.refs):
            for part in folder.glob(".*.part") if folder.is_dir() else ():
                try:
                    if now - part.stat().st_mtime > IN_USE_S:
                        part.unlink(missing_ok=True)
                except FileNotFoundError:
                    continue
        try:
            entries = [(p.stat(), p) for p in self.blobs.glob("*.safetensors")]
        except FileNotFoundError:
            return []
        total = sum(st.st_size for st, _ in entries)
        removed = []
        for st, path in sorted(entries, key=lambda e: e[0].st_mtime):
            if total <= self.max_bytes:
                break
            sha = path.name.removesuffix(".safetensors")
            if sha in keep or now - st.st_mtime < IN_USE_S:
                continue
            path.unlink(missing_ok=True)
            total -= st.st_size
            removed.append(sha)
        return removed


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_lora(index: int, spec: LoraSpec, cache: LoraCache, policy: FetchPolicy, lora_dir: str | None,
               work: Path) -> JobLora:
    """`loras[index]` as a cached safetensors file; JobErrors are the fetch layer's (the caller names the field)."""
    ref, kind = spec.ref, media_ref_kind(spec.ref)
    key: str | None = None
    ttl: float | None = None
    if kind == "path":
        ref, policy = _volume_ref(ref, policy, lora_dir)
        real = vet_volume_path(ref, policy, "lora")
        try:
            st = real.stat()
        except OSError:
            st = None
        if st is not None and 0 < st.st_size <= policy.cap("lora"):  # else the fetch below says what is wrong
            key = f"volume:{real}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    else:
        key, ttl = f"{kind}:{ref}", cache.ref_ttl_s
    if key is not None:
        sha = cache.recall(key, ttl)
        hit = cache.find(sha) if sha is not None else None
        if hit is not None:
            return JobLora(index, hit, spec.scale, sha, hit.stat().st_size, cached=True)
    fetched = fetch_media(ref, work / "loras", policy, "lora")
    sha = sha256_file(fetched.path)
    found = cache.find(sha)
    path = found if found is not None else cache.add(fetched.path, sha)
    if key is not None:
        cache.remember(key, sha)
    return JobLora(index, path, spec.scale, sha, fetched.size, cached=False)


def _volume_ref(ref: str, policy: FetchPolicy, lora_dir: str | None) -> tuple[str, FetchPolicy]:
    """A relative name lies in the LoRA folder (its only root); an absolute path follows the rules of every volume
    ref (the worker's allowed roots)."""
    if not ref.startswith("/"):
        if not lora_dir:
            raise JobError(ErrorCode.E_INPUT_VALIDATION, f"{ref!r} is a name, but this worker has no LoRA folder",
                           hint="Give an absolute path on the volume, an https:// URL or s3://bucket/key.")
        root = Path(os.path.abspath(lora_dir))
        return str(root / ref), replace(policy, volume_roots=(root,))
    return ref, policy
