"""Upload a weights folder to a Runpod network volume through Runpod's S3-compatible API.

Runpod serves each datacenter's volumes at `https://s3api-<datacenter>.runpod.io` with the volume
id as the bucket. Its multipart API caps one part at 500 MB, so files go up in parts of
`part_size` (default 128 MiB, checked against `max_part_size`). Resumable: a file whose object
already has the same size is skipped; an unfinished multipart upload of the same key is picked up
(ListMultipartUploads), its parts are listed (ListParts) and each part whose size and MD5 ETag
match the local bytes is kept, so a rerun after an interruption uploads only what is missing.
The manifest goes up last, so its presence on the volume means every file before it is complete.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.weights.manifest import MANIFEST_NAME, iter_files, rel

RUNPOD_MAX_PART_BYTES = 500 * 1000 * 1000  # "500 MB", read as the smaller decimal value
S3_MIN_PART_BYTES = 5 * 2**20  # every part but the last, as in S3
DEFAULT_PART_BYTES = 128 * 2**20


def runpod_endpoint(datacenter: str) -> str:
    """Runpod's S3 endpoint for a datacenter id such as `EU-RO-1`."""
    return f"https://s3api-{datacenter.lower()}.runpod.io"


@dataclass
class FileResult:
    key: str
    size: int
    action: str  # skipped | put | multipart
    parts_uploaded: int = 0
    parts_reused: int = 0


@dataclass
class UploadReport:
    files: list[FileResult] = field(default_factory=list)

    @property
    def bytes_sent(self) -> int:
        return sum(f.size for f in self.files if f.action != "skipped")


def make_client(
    endpoint: str | None,
    *,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    max_attempts: int = 5,
) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": max_attempts, "mode": "standard"},
        # S3-compatible stores (Runpod's included) need not understand the newer default
        # checksum trailers; send checksums only where the API requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or os.environ.get("RUNPOD_S3_REGION") or "us-east-1",
        aws_access_key_id=access_key or os.environ.get("RUNPOD_S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=secret_key
        or os.environ.get("RUNPOD_S3_SECRET_KEY")
        or os.environ.get("AWS_SECRET_ACCESS_KEY"),
        config=cfg,
    )


def _read_part(path: Path, number: int, part_size: int, size: int) -> bytes:
    start = (number - 1) * part_size
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(min(part_size, size - start))


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _pending_upload(client: Any, bucket: str, key: str) -> str | None:
    """The newest unfinished multipart upload of exactly this key, if the server lists one."""
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    mine = [u for u in uploads if u.get("Key") == key]
    if not mine:
        return None
    mine.sort(key=lambda u: u.get("Initiated") or 0)
    return mine[-1]["UploadId"]


def _listed_parts(client: Any, bucket: str, key: str, upload_id: str) -> dict[int, dict[str, Any]]:
    parts: dict[int, dict[str, Any]] = {}
    marker = 0
    while True:
        resp = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
        for p in resp.get("Parts", []):
            parts[int(p["PartNumber"])] = p
        if not resp.get("IsTruncated"):
            return parts
        marker = int(resp["NextPartNumberMarker"])


def upload_file(
    client: Any,
    path: Path,
    bucket: str,
    key: str,
    *,
    part_size: int = DEFAULT_PART_BYTES,
    concurrency: int = 4,
    progress: Callable[[str], None] | None = None,
) -> FileResult:
    size = path.stat().st_size
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        if int(head["ContentLength"]) == size:
            return FileResult(key, size, "skipped")
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey", "NotFound"}:
            raise
    if size <= part_size:
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        return FileResult(key, size, "put")

    count = -(-size // part_size)
    upload_id = _pending_upload(client, bucket, key)
    done: dict[int, str] = {}
    if upload_id is not None:
        for number, p in _listed_parts(client, bucket, key, upload_id).items():
            expected = min(part_size, size - (number - 1) * part_size)
            if number > count or int(p["Size"]) != expected:
                # uploaded with another part size (or for another file): start afresh
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                upload_id, done = None, {}
                break
            etag = str(p["ETag"]).strip('"')
            if etag == _md5(_read_part(path, number, part_size, size)):
                done[number] = str(p["ETag"])
    if upload_id is None:
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    reused = len(done)
    todo = [n for n in range(1, count + 1) if n not in done]

    def send(number: int) -> tuple[int, str]:
        body = _read_part(path, number, part_size, size)
        resp = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        if progress:
            progress(f"{key}: part {number}/{count}")
        return number, resp["ETag"]

    # Parts are read inside the workers, so memory stays at `concurrency` parts.
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for number, etag in pool.map(send, todo):
            done[number] = etag
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": done[n]} for n in sorted(done)]},
    )
    return FileResult(key, size, "multipart", parts_uploaded=len(todo), parts_reused=reused)


def upload_volume(
    src: Path | str,
    bucket: str,
    *,
    client: Any,
    prefix: str = "",
    part_size: int = DEFAULT_PART_BYTES,
    max_part_size: int = RUNPOD_MAX_PART_BYTES,
    min_part_size: int = S3_MIN_PART_BYTES,
    concurrency: int = 4,
    files: Iterable[Path] | None = None,
    progress: Callable[[str], None] | None = None,
) -> UploadReport:
    """Upload every file under `src` to `bucket` (the volume id) as `<prefix>/<relative path>`."""
    if not min_part_size <= part_size <= max_part_size:
        raise ValueError(f"part size {part_size} must lie within [{min_part_size}, {max_part_size}] bytes")
    src = Path(src)
    prefix = prefix.strip("/")
    paths = list(files) if files is not None else list(iter_files(src))
    manifest = [p for p in paths if p.name == MANIFEST_NAME]
    if files is None and (src / MANIFEST_NAME).is_file():
        manifest = [src / MANIFEST_NAME]
    ordered = [p for p in paths if p not in manifest] + manifest
    report = UploadReport()
    for path in ordered:
        key = f"{prefix}/{rel(src, path)}" if prefix else rel(src, path)
        result = upload_file(client, path, bucket, key, part_size=part_size, concurrency=concurrency, progress=progress)
        if progress:
            progress(f"{key}: {result.action}")
        report.files.append(result)
    return report
