"""Build a job's `input` from local files and parameters, inside Runpod's payload limits.

Media given as URLs (`https://`, `s3://`) or worker paths pass through untouched. Local files
become base64 `data:` URIs while the whole request body stays under the limit of the route
(`/run` 10 MB, `/runsync` 20 MB); above it, the largest inlined files are uploaded to S3 one
by one until the body fits, and passed as a presigned GET URL (or as `s3://bucket/key` when
the worker reads the same bucket with its own credentials: `ref_style="s3"`).

Field names are the job contract's canonical names (contract/job.py). The payload is
checked against `contract.job.JobInput`; the contract depends on pydantic only, so the
client keeps its no-runpod, no-torch promise.
"""
from __future__ import annotations

import base64
import json
import mimetypes
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "SIZES",
    "MODES",
    "SAMPLER_PRESETS",
    "OUTPUT_TARGETS",
    "RUN_LIMIT_BYTES",
    "RUNSYNC_LIMIT_BYTES",
    "S3UploadConfig",
    "PayloadTooLarge",
    "MediaSpec",
    "RefReport",
    "build_job_input",
    "to_data_uri",
    "sniff_mime",
    "is_remote_ref",
    "validate_job_input",
    "InvalidJobInput",
    "LocalMediaError",
    "check_local_media",
    "sniff_content",
    "WORKER_VOLUME_ROOT",
]

RUN_LIMIT_BYTES = 10 * 1000 * 1000
RUNSYNC_LIMIT_BYTES = 20 * 1000 * 1000
# Headroom for the envelope ({"input": …}, webhook, policy) and for proxies that count headers.
BODY_MARGIN_BYTES = 64 * 1024

_REMOTE_PREFIXES = ("https://", "http://", "s3://", "data:")

from contract.choices import MODES, OUTPUT_TARGETS, SAMPLER_PRESETS, SIZES
from contract.errors import JobError
from contract.job import parse_job_input


class PayloadTooLarge(ValueError):
    """The body is over the limit and there is no S3 configuration to move media out of it."""


@dataclass(frozen=True)
class S3UploadConfig:
    bucket: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None
    prefix: str = "inputs/"
    expiry_s: int = 3600
    ref_style: Literal["presign", "s3"] = "presign"
    addressing_style: Literal["auto", "path", "virtual"] = "auto"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "S3UploadConfig | None":
        """The same variables the worker reads (S3_BUCKET, S3_ENDPOINT, ...); None without a bucket."""
        env = dict(os.environ if env is None else env)
        bucket = env.get("S3_BUCKET")
        if not bucket:
            return None
        return cls(
            bucket=bucket,
            endpoint_url=env.get("S3_ENDPOINT") or None,
            region=env.get("S3_REGION") or "us-east-1",
            access_key=env.get("S3_ACCESS_KEY") or None,
            secret_key=env.get("S3_SECRET_KEY") or None,
            prefix=env.get("S3_INPUT_PREFIX", "inputs/"),
        )

    def client(self) -> Any:
        import boto3  # only when an upload happens
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": self.addressing_style},
                          retries={"max_attempts": 4, "mode": "standard"}),
        )

    def upload(self, path: Path, mime: str) -> str:
        key = f"{self.prefix.strip('/')}/{uuid.uuid4().hex}/{path.name}".lstrip("/")
        s3 = self.client()
        s3.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": mime})
        if self.ref_style == "s3":
            return f"s3://{self.bucket}/{key}"
        return s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.expiry_s
        )


def is_remote_ref(ref: str) -> bool:
    return ref.lower().startswith(_REMOTE_PREFIXES)


_MAGIC: list[tuple[bytes, int, str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"WAVE", 8, "audio/wav"),
    (b"ID3", 0, "audio/mpeg"),
    (b"fLaC", 0, "audio/flac"),
    (b"OggS", 0, "audio/ogg"),
    (b"ftyp", 4, "video/mp4"),
    (b"\x1a\x45\xdf\xa3", 0, "video/webm"),
]


def sniff_content(path: Path) -> str | None:
    """The media type the file's first bytes show (None: no image, audio or video format we know)."""
    with path.open("rb") as fh:
        head = fh.read(16)
    for magic, offset, mime in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if mime == "video/mp4" and path.suffix.lower() in (".m4a", ".aac"):
                return "audio/mp4"
            return mime
    if head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xf1", b"\xff\xf9"):
        return "audio/mpeg" if head[1] in (0xFB, 0xF3, 0xF2) else "audio/aac"
    return None


def sniff_mime(path: Path) -> str:
    """Content first (browsers and Gradio temp files often lose extensions), then the name."""
    found = sniff_content(path)
    if found:
        return found
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


# The stock worker's download caps (conf/config.yaml server.download) and the shortest speech it takes.
MAX_BYTES = {"image": 50 * 1024 * 1024, "audio": 200 * 1024 * 1024, "video": 1024 * 1024 * 1024,
             "lora": 2048 * 1024 * 1024}
MIN_AUDIO_S = 0.08
# A path that is not on this machine is sent as a worker path only under the worker's volume.
WORKER_VOLUME_ROOT = os.environ.get("INFINITETALK_VOLUME_ROOT", "/runpod-volume").rstrip("/") + "/"


class LocalMediaError(ValueError):
    """A local file that the worker would refuse (wrong type, too large, no sound): caught before sending."""

    def __init__(self, field_name: str, message: str, hint: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.hint = hint


def check_local_media(path: Path, field_name: str) -> str:
    """Check a local file against what `field_name` needs (type from its content, size, audio length);
    returns its media type or raises LocalMediaError naming the field."""
    kind = "audio" if field_name.startswith("audio") else "image" if field_name.startswith("mask") else field_name
    if field_name.startswith("loras"):
        return _check_local_lora(path, field_name)
    found = sniff_content(path)
    top = (found or "").split("/", 1)[0]
    ok = top == kind or (kind == "audio" and found == "video/mp4")
    if not ok:
        what = f"{'an' if top[:1] in 'aeiou' else 'a'} {top} file ({found})" if found else "not an image, audio or video file we recognise"
        formats = {"image": "PNG, JPEG or WebP", "audio": "WAV, MP3, FLAC, OGG or M4A", "video": "MP4 or WebM"}[kind]
        raise LocalMediaError(field_name, f"{path.name} is {what}, judged from its content",
                              f"Give {field_name} a {formats} file.")
    size = path.stat().st_size
    if size > MAX_BYTES[kind]:
        raise LocalMediaError(field_name, f"{path.name} is {size / 2**20:.0f} MiB, over the worker's "
                              f"{MAX_BYTES[kind] // 2**20} MiB limit for {kind}",
                              f"Give {field_name} a smaller file, or pass an https:// URL the worker may fetch.")
    if kind == "audio":
        from client.estimate import media_duration_s

        seconds = media_duration_s(path)
        if seconds is not None and seconds < MIN_AUDIO_S:
            raise LocalMediaError(field_name, f"{path.name} lasts {seconds:.3f} s, too short to drive a video",
                                  f"Give {field_name} at least a fraction of a second of speech.")
    return found or "application/octet-stream"


def _check_local_lora(path: Path, field_name: str) -> str:
    """A LoRA file must be safetensors (an 8-byte little-endian header length, then a JSON header) within the
    worker's cap (server.download.max_lora_bytes' default): a .ckpt or a text file is refused before sending."""
    with path.open("rb") as fh:
        head = fh.read(9)
    size = path.stat().st_size
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    if not (head[8:9] == b"{" and 2 <= n <= size - 8):
        raise LocalMediaError(field_name, f"{path.name} is not a safetensors file, judged from its content",
                              f"Give {field_name} a .safetensors LoRA (Wan2.1 / InfiniteTalk key names).")
    if size > MAX_BYTES["lora"]:
        raise LocalMediaError(field_name, f"{path.name} is {size / 2**20:.0f} MiB, over the worker's "
                              f"{MAX_BYTES['lora'] // 2**20} MiB limit for a LoRA", f"Give {field_name} a smaller file.")
    return "application/octet-stream"


class InvalidJobInput(ValueError):
    """The job input breaks the contract; `str()` is the worker's own message, `hint` what to change."""

    def __init__(self, message: str, hint: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.field = field


def to_data_uri(path: Path, mime: str | None = None) -> str:
    mime = mime or sniff_mime(path)
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


@dataclass
class MediaSpec:
    """The job's media: each a local file path or a ref the worker fetches itself."""

    image: str | Path | None = None
    video: str | Path | None = None
    audio1: str | Path | None = None
    audio2: str | Path | None = None
    tts_text: str | None = None
    tts_voice: str | None = None
    tts_voice2: str | None = None
    # a mask image (a local file or a ref), or a polygon [[x, y], …] that passes through as it is
    mask: str | Path | list | None = None
    masks: dict[str, str | Path | list] = field(default_factory=dict)  # per speaker: person1 / person2
    # user LoRAs: (a local .safetensors file or a ref the worker resolves, scale or None for the default)
    loras: list[tuple[str | Path, float | None]] = field(default_factory=list)


@dataclass
class RefReport:
    """How one media field was sent (the UI and the CLI print these)."""

    field: str
    how: Literal["ref", "inline", "s3"]
    bytes: int = 0
    ref_preview: str = ""


@dataclass
class _Slot:
    field: str
    path: Path
    mime: str
    value: str = ""
    how: str = "inline"
    size: int = field(default=0)


def _set(d: Any, dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    key: Any = int(head) if isinstance(d, list) else head  # "loras.0.ref": a list item's field
    if rest:
        _set(d[key] if isinstance(d, list) else d.setdefault(key, {}), rest, value)
    else:
        d[key] = value


def _preview(ref: str) -> str:
    if ref.startswith("data:"):
        return ref.split(",", 1)[0] + ",…"
    return ref.split("?", 1)[0]


def build_job_input(
    media: MediaSpec,
    params: dict[str, Any] | None = None,
    *,
    limit_bytes: int = RUN_LIMIT_BYTES,
    s3: S3UploadConfig | None = None,
    validate: bool = True,
) -> tuple[dict[str, Any], list[RefReport]]:
    """Return (job input, how each media field was sent). Parameters that are None are left out."""
    job: dict[str, Any] = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
    slots: list[_Slot] = []
    reports: list[RefReport] = []

    def add(field_name: str, value: str | Path | list | None) -> None:
        if value is None or value == "":
            return
        if isinstance(value, list):  # a polygon: numbers, not a file
            _set(job, field_name, value)
            return
        text = str(value)
        if isinstance(value, str) and is_remote_ref(text):
            _set(job, field_name, text)
            reports.append(RefReport(field_name, "ref", 0, _preview(text)))
            return
        path = Path(text).expanduser()
        if not path.is_file():
            worker_side = text.startswith(WORKER_VOLUME_ROOT) or field_name.startswith("loras")
            if isinstance(value, str) and not path.exists() and worker_side:
                _set(job, field_name, text)  # a path on the worker's volume (or a name in its LoRA folder)
                reports.append(RefReport(field_name, "ref", 0, text))
                return
            raise FileNotFoundError(
                f"{field_name}: no such file {text} (paths on the worker's volume start with {WORKER_VOLUME_ROOT})"
            )
        mime = check_local_media(path, field_name)
        slot = _Slot(field_name, path, mime, size=path.stat().st_size)
        slot.value = to_data_uri(path, mime)
        _set(job, field_name, slot.value)
        slots.append(slot)

    if media.image is not None and media.video is not None:
        raise ValueError("give an image or a video, not both")
    add("image", media.image)
    add("video", media.video)
    if media.audio1 is not None and media.tts_text:
        raise ValueError("give audio or TTS text, not both")
    if media.audio2 is not None and media.audio1 is None:
        raise ValueError("audio for person 2 needs audio for person 1")
    add("audio.person1", media.audio1)
    add("audio.person2", media.audio2)
    if media.tts_text:
        # voices are names or short refs the worker resolves (the contract caps them at 4096 chars), never inlined
        job["tts"] = {"text": media.tts_text}
        if media.tts_voice:
            job["tts"]["voice"] = str(media.tts_voice)
        if media.tts_voice2:
            job["tts"]["voice2"] = str(media.tts_voice2)
    add("mask", media.mask)
    for person, m in sorted(media.masks.items()):
        add(f"masks.{person}", m)
    if media.loras:  # a local LoRA file is inlined (or uploaded when the body is too large) like the media
        job["loras"] = [{} if scale is None else {"scale": scale} for _, scale in media.loras]
        for i, (ref, _) in enumerate(media.loras):
            add(f"loras.{i}.ref", ref)

    budget = limit_bytes - BODY_MARGIN_BYTES
    for slot in sorted(slots, key=lambda s: s.size, reverse=True):
        if _body_size(job) <= budget:
            break
        if s3 is None:
            raise PayloadTooLarge(
                f"the request would be {_body_size(job) / 1e6:.1f} MB, over the {limit_bytes / 1e6:.0f} MB limit; "
                "configure S3 (bucket and credentials) so large inputs are uploaded and passed as URLs, "
                "or pass an https:// URL yourself"
            )
        slot.value = s3.upload(slot.path, slot.mime)
        slot.how = "s3"
        _set(job, slot.field, slot.value)
    if _body_size(job) > budget:
        raise PayloadTooLarge(f"the request is {_body_size(job) / 1e6:.1f} MB even with every file uploaded")
    for slot in slots:
        reports.append(RefReport(slot.field, slot.how, slot.size, _preview(slot.value)))  # type: ignore[arg-type]
    if validate:
        validate_job_input(job)
    return job, reports


def _body_size(job: dict[str, Any]) -> int:
    return len(json.dumps({"input": job}, separators=(",", ":")).encode())


def validate_job_input(job: dict[str, Any]) -> None:
    """Check against the job contract before spending a request: InvalidJobInput with the worker's
    own message and hint (the same words the worker would answer with)."""
    try:
        parse_job_input(job, allow_http=True)
    except JobError as exc:
        errors = (exc.details or {}).get("errors") or [{}]
        raise InvalidJobInput(exc.message, exc.hint, errors[0].get("field")) from None
