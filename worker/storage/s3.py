"""Upload results to S3 or an S3-compatible store and hand back a URL.

Choices and why:
- `request_checksum_calculation` / `response_checksum_validation` = "when_required":
  recent botocore sends CRC32 checksum headers by default, which Cloudflare R2 and
  Backblaze B2 reject; "when_required" restores the classic behaviour everywhere.
- boto3's managed transfer (TransferConfig) does multipart for big files. If any part
  or the completion fails we abort the multipart upload ourselves as well (s3transfer
  normally does), so no half upload keeps costing storage and no object appears.
- Auth failures are not retried and become E_UPLOAD with a hint about credentials;
  messages never include keys or signed URLs.
"""
from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from contract.errors import ErrorCode, JobError
from worker.storage.base import S3Settings, StoredVideo, check_key

AUTH_ERROR_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
        "Forbidden",
        "403",
    }
)
_NOT_RETRYABLE = AUTH_ERROR_CODES | {"NoSuchBucket", "InvalidBucketName", "EntityTooSmall", "InvalidPart", "400", "404"}


def make_s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client configured for AWS and the S3-compatible stores alike."""
    cfg = Config(
        region_name=settings.region,
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url or None,
        aws_access_key_id=settings.access_key.get_secret_value() if settings.access_key else None,
        aws_secret_access_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
        aws_session_token=settings.session_token.get_secret_value() if settings.session_token else None,
        config=cfg,
    )


def s3_error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code or (str(status) if status else None)
    return None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        code = s3_error_code(exc) or ""
        return code not in _NOT_RETRYABLE
    # s3transfer wraps some failures; connection problems are worth another try.
    return isinstance(exc, (BotoCoreError, EndpointConnectionError, ConnectionError, OSError)) and not isinstance(
        exc, FileNotFoundError
    )


def upload_error(exc: BaseException, bucket: str, key: str) -> JobError:
    """Map a boto/s3transfer failure to E_UPLOAD with a hint, keeping secrets out."""
    code = s3_error_code(exc) or _inner_code(exc)
    where = f"s3://{bucket}/{key}"
    if code in AUTH_ERROR_CODES:
        return JobError(
            ErrorCode.E_UPLOAD,
            f"S3 refused the credentials for {where} ({code})",
            hint="Check S3_ACCESS_KEY / S3_SECRET_KEY (and S3_ENDPOINT, S3_REGION for R2/B2/MinIO), and that "
            "the key may PutObject on the bucket.",
            details={"s3_error": code},
        )
    if code == "NoSuchBucket":
        return JobError(
            ErrorCode.E_UPLOAD,
            f"bucket {bucket!r} does not exist",
            hint="Create the bucket or set S3_BUCKET to an existing one.",
            details={"s3_error": code},
        )
    return JobError(
        ErrorCode.E_UPLOAD,
        f"upload to {where} failed: {code or type(exc).__name__}",
        details={"s3_error": code} if code else None,
    )


def _inner_code(exc: BaseException) -> str | None:
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        c = s3_error_code(cur)
        if c:
            return c
        cur = cur.__cause__ or cur.__context__
    return None


class S3Store:
    """Result store on S3: managed (multipart) upload, then a presigned or public URL."""

    location = "s3"

    def __init__(self, settings: S3Settings, client: Any | None = None) -> None:
        if not settings.bucket:
            raise JobError(ErrorCode.E_UPLOAD, "no S3 bucket configured", hint="Set S3_BUCKET or choose output 'volume'.")
        self.settings = settings
        self.client = client or make_s3_client(settings)
        self.transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold_bytes,
            multipart_chunksize=settings.multipart_chunksize_bytes,
            max_concurrency=settings.max_concurrency,
            use_threads=settings.max_concurrency > 1,
        )

    def put(
        self, local_path: Path, key: str, *, content_type: str | None = None, cache_control: str | None = None
    ) -> StoredVideo:
        """Upload; `cache_control` is for objects rewritten in place (the preview's playlist)."""
        key = check_key(key)
        bucket = self.settings.bucket
        size = Path(local_path).stat().st_size
        content_type = content_type or mimetypes.guess_type(str(key))[0] or "video/mp4"
        extra = {"ContentType": content_type, **({"CacheControl": cache_control} if cache_control else {})}
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self.settings.attempts),
                wait=wait_exponential(multiplier=0.5, max=8),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    try:
                        self.client.upload_file(
                            str(local_path),
                            bucket,
                            key,
                            ExtraArgs=extra,
                            Config=self.transfer,
                        )
                    except BaseException:
                        self._abort_pending(key)
                        raise
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001 - boto raises many unrelated types
            raise upload_error(exc, bucket, key) from None
        # An attempt that timed out may have left its multipart upload open (its abort timed out
        # too); the finished one is complete, so whatever is still pending for this key is an orphan.
        self._abort_pending(key)
        return StoredVideo(
            location="s3",
            key=key,
            bytes=size,
            url=self.url_for(key),
            content_type=content_type,
            expires_in_s=None if self.settings.public_base_url else self.settings.presign_expiry_s,
        )

    def discard(self, key: str) -> None:
        """Remove an object (best effort: a leftover costs storage, never the job)."""
        try:
            self.client.delete_object(Bucket=self.settings.bucket, Key=check_key(key))
        except Exception:  # noqa: BLE001
            pass

    def url_for(self, key: str) -> str:
        """Public URL when a public base is configured (CDN, R2 public bucket), else presigned GET."""
        if self.settings.public_base_url:
            return self.settings.public_base_url.rstrip("/") + "/" + key
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.settings.bucket, "Key": key},
            ExpiresIn=self.settings.presign_expiry_s,
        )

    def _abort_pending(self, key: str) -> None:
        """Abort any multipart upload still open for `key` (best effort, never raises)."""
        try:
            resp = self.client.list_multipart_uploads(Bucket=self.settings.bucket, Prefix=key)
            for up in resp.get("Uploads", []) or []:
                if up.get("Key") == key:
                    self.client.abort_multipart_upload(Bucket=self.settings.bucket, Key=key, UploadId=up["UploadId"])
        except Exception:  # noqa: BLE001
            pass
