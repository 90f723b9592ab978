"""What every result store returns, and the settings they are built from.

The handler should not care where the MP4 went: it gets one `StoredVideo` and copies
its fields into the job output. Stores share one tiny protocol so that the choice
(`s3` | `volume` | `local` | `inline`) is a setting, not a code path.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from contract.choices import OUTPUT_TARGETS

Location = Literal[OUTPUT_TARGETS]  # type: ignore[valid-type]  # conf/storage option names


@dataclass(frozen=True)
class StoredVideo:
    """Where a finished video lives; exactly one of url / path / base64 is set."""

    location: Location
    key: str
    bytes: int
    url: str | None = None
    path: str | None = None
    base64: str | None = None
    content_type: str = "video/mp4"
    expires_in_s: int | None = None


@runtime_checkable
class VideoStore(Protocol):
    """Puts a finished local file somewhere the caller can reach it."""

    location: Location

    def put(self, local_path: Path, key: str) -> StoredVideo: ...


class S3Settings(BaseModel):
    """Credentials and endpoint for S3 or an S3-compatible store (R2, B2, MinIO).

    Secrets are SecretStr so they never appear in reprs, logs or error details.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    session_token: SecretStr | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    public_base_url: str | None = None
    presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    key_prefix: str = "outputs/"
    multipart_threshold_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    multipart_chunksize_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    max_concurrency: int = Field(default=4, ge=1, le=32)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    attempts: int = Field(default=3, ge=1, le=10)


class StorageSettings(BaseModel):
    """Which store results go to, and each store's knobs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Location = "local"
    s3: S3Settings = S3Settings()
    volume_root: Path = Path("/runpod-volume")
    volume_outputs_dir: str = "outputs"
    local_root: Path = Path("outputs")
    inline_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1)


_KEY_OK = re.compile(r"^[A-Za-z0-9._\-/]+$")


def check_key(key: str) -> str:
    """Refuse keys that could climb out of a folder or look odd in a URL.

    Keys come from our own job ids plus a user prefix; keeping them to a plain alphabet
    means one rule serves S3 keys and file paths alike.
    """
    if not key or len(key) > 512 or not _KEY_OK.match(key):
        raise ValueError(f"invalid storage key {key!r}: use letters, digits, '.', '_', '-', '/'")
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}: empty, '.' or '..' segment")
    return key


def atomic_copy(src: Path, dest: Path) -> int:
    """Copy `src` to `dest` through a temp file in dest's folder, then rename.

    Readers of the folder (another worker, a web server on the volume) never see a
    half-written MP4: the name appears only once the bytes are complete and fsynced.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    total = 0
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            while True:
                buf = inp.read(1024 * 1024)
                if not buf:
                    break
                out.write(buf)
                total += len(buf)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return total
