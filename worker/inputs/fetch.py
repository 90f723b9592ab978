"""Bring one media reference from a job payload onto local disk, safely.

A ref is one of: an `https://` URL (`http://` only if the policy allows), a `data:` URI
with base64 content, `s3://bucket/key`, or an absolute path under an allowed root (the
network volume). Whatever the source, the same promises hold:

- the bytes are capped (declared size first, then the streamed count), so a hostile or
  mistaken ref cannot fill the disk;
- network destinations pass `netguard` before every hop (redirects are followed by hand)
  and the socket is pinned to the vetted address;
- the content is sniffed from its magic bytes and must match the kind the job expects;
  a server's Content-Type is not trusted;
- a failed or refused fetch leaves no partial file behind;
- error messages name the ref with credentials and signed query strings removed.

Error codes: a ref we refuse (bad scheme, private address, path escape, too large,
wrong type) is the caller's to fix -> E_INPUT_VALIDATION. A ref we accept but cannot
get (DNS, connect, timeouts, 4xx/5xx, missing object) -> E_DOWNLOAD_FAILED.
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import errno
import os
import re
import socket
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlsplit, urlunsplit

import filetype
import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay

from contract.errors import ErrorCode, JobError
from worker.inputs.netguard import AddressRefused, GuardedTransport, MalformedURL, NetPolicy, vet_url
from worker.storage.base import S3Settings

Kind = Literal["image", "audio", "video", "lora"]
Source = Literal["https", "http", "data", "s3", "volume"]

MiB = 1024 * 1024
_CHUNK = 256 * 1024
_SNIFF_BYTES = 8192
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

#: Sniffed MIME types accepted per kind. Audio also takes video containers because
#: people commonly pass the MP4 whose soundtrack they want; the audio stage extracts it.
ACCEPTED_TYPES: dict[str, frozenset[str]] = {
    "image": frozenset({"image/jpeg", "image/png", "image/apng", "image/webp", "image/gif", "image/bmp", "image/tiff"}),
    "video": frozenset(
        {"video/mp4", "video/x-m4v", "video/quicktime", "video/webm", "video/x-matroska", "video/x-msvideo"}
    ),
    "audio": frozenset(
        {
            "audio/x-wav",
            "audio/mpeg",
            "audio/x-flac",
            "audio/ogg",
            "audio/mp4",
            "audio/aac",
            "audio/x-aiff",
            "video/mp4",
            "video/x-m4v",
            "video/quicktime",
            "video/webm",
            "video/x-matroska",
        }
    ),
    # a job's own LoRA (job field loras): safetensors only, sniffed from its header (worker/inputs/safetensors_header.py)
    "lora": frozenset({"application/x-safetensors"}),
}

DEFAULT_MAX_BYTES: dict[str, int] = {"image": 30 * MiB, "audio": 200 * MiB, "video": 1024 * MiB, "lora": 2048 * MiB}


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and permissions for fetching refs; one per worker, from the config."""

    max_bytes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_BYTES))
    allow_http: bool = False
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 300.0
    attempts: int = 3
    backoff_s: float = 0.5
    max_retry_after_s: float = 10.0
    max_redirects: int = 5
    net: NetPolicy = field(default_factory=NetPolicy)
    volume_roots: tuple[Path, ...] = (Path("/runpod-volume"),)
    s3: S3Settings | None = None
    #: Where s3:// refs may point, as "bucket/prefix" entries (a prefix of "" is the whole bucket).
    #: Refs are read with the worker's own credentials, so anything outside these (another job's
    #: results above all) is refused before any request; empty refuses every s3:// ref.
    s3_allowed_prefixes: tuple[str, ...] = ()
    #: Folders under the volume roots that are never inputs (results, checkpoints, caches).
    volume_excluded: tuple[Path, ...] = ()
    verify_tls: bool | str = True
    user_agent: str = "infinitetalk-worker/0.1"

    def cap(self, kind: str) -> int:
        return int(self.max_bytes.get(kind, max(DEFAULT_MAX_BYTES.values())))


@dataclass(frozen=True)
class FetchedMedia:
    path: Path
    size: int
    content_type: str  # sniffed from the bytes, not the server's claim
    source: Source
    ref: str = ""  # the ref as safe to log (secrets redacted)


# ---------------------------------------------------------------------------------------
# Redaction

_SECRET_QUERY = re.compile(r"(sig|signature|token|key|secret|credential|auth|password|pass|x-amz-|x-goog-)", re.I)


def redact_ref(ref: str) -> str:
    """The ref as it may appear in messages and logs.

    URLs lose userinfo and the values of every query parameter (presigned URLs carry
    their signature there; some services put API keys there); data: URIs are reduced
    to their media type and length.
    """
    if ref[:5].lower() == "data:":
        head = ref[5:64].split(",", 1)[0]
        return f"data:{head},<{len(ref)} chars>"
    if "://" not in ref[:16]:
        return ref if len(ref) <= 300 else ref[:300] + "…"
    try:
        parts = urlsplit(ref)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        names = [kv.split("=", 1)[0] for kv in query.split("&") if kv]
        query = "&".join(f"{n}=***" for n in names[:20])
    out = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return out if len(out) <= 300 else out[:300] + "…"


# ---------------------------------------------------------------------------------------
# Entry point


def fetch_media(ref: str, dest_dir: Path, policy: FetchPolicy, kind: Kind) -> FetchedMedia:
    """Fetch `ref` into `dest_dir` and check that it is a `kind` file within the caps."""
    if kind not in ACCEPTED_TYPES:
        raise ValueError(f"unknown media kind {kind!r}")
    if not isinstance(ref, str) or not ref.strip():
        raise JobError(ErrorCode.E_INPUT_VALIDATION, f"empty {kind} reference")
    ref = ref.strip()
    shown = redact_ref(ref)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".{kind}-{uuid.uuid4().hex[:12]}.part"
    try:
        source, size = _dispatch(ref, shown, tmp, policy, kind)
        mime, ext = _sniff(tmp, kind, shown)
        final = tmp.with_name(tmp.name[1:].removesuffix(".part") + "." + ext)
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise _failed(
                kind, shown, "the worker's disk is full", hint="The worker ran out of disk space; retry the job.",
                reason="disk_full",
            ) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FetchedMedia(path=final, size=size, content_type=mime, source=source, ref=shown)


def _dispatch(ref: str, shown: str, tmp: Path, policy: FetchPolicy, kind: str) -> tuple[Source, int]:
    lower = ref[:8].lower()
    if lower.startswith("data:"):
        return "data", _fetch_data(ref, shown, tmp, policy.cap(kind), kind)
    if lower.startswith("https://") or lower.startswith("http://"):
        scheme: Source = "https" if lower.startswith("https://") else "http"
        return scheme, _fetch_http(ref, shown, tmp, policy, kind)
    if lower.startswith("s3://"):
        return "s3", _fetch_s3(ref, shown, tmp, policy, kind)
    if ref.startswith("/"):
        return "volume", _fetch_volume(ref, shown, tmp, policy, kind)
    scheme_m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", ref)
    what = f"scheme {scheme_m.group(1)!r}" if scheme_m else "relative path"
    raise JobError(
        ErrorCode.E_INPUT_VALIDATION,
        f"unsupported {kind} reference {shown} ({what})",
        hint="Use an https:// URL, a data: URI (base64), s3://bucket/key, or an absolute path on the volume.",
    )


def _refused(kind: str, shown: str, what: str, hint: str | None = None, **details: Any) -> JobError:
    return JobError(
        ErrorCode.E_INPUT_VALIDATION,
        f"{kind} reference {shown} refused: {what}",
        hint=hint,
        details={"ref": shown, **details} if details else {"ref": shown},
    )


def _failed(kind: str, shown: str, what: str, hint: str | None = None, **details: Any) -> JobError:
    return JobError(
        ErrorCode.E_DOWNLOAD_FAILED,
        f"could not download {kind} {shown}: {what}",
        hint=hint,
        details={"ref": shown, **details},
    )


def _too_large(kind: str, shown: str, cap: int, size: int | None = None) -> JobError:
    said = f"{size} bytes" if size is not None else "more"
    return _refused(
        kind,
        shown,
        f"{said} exceeds the {kind} limit of {cap} bytes",
        hint=f"Send a smaller {kind} (at most {cap // MiB} MiB).",
        reason="too_large",
        max_bytes=cap,
    )


# ---------------------------------------------------------------------------------------
# data: URIs

_DATA_RE = re.compile(r"^data:(?P<meta>[^,]*),(?P<data>.*)$", re.S | re.I)


def _fetch_data(ref: str, shown: str, tmp: Path, cap: int, kind: str) -> int:
    m = _DATA_RE.match(ref)
    if not m:
        raise _refused(kind, shown, "malformed data: URI")
    meta = [p.strip().lower() for p in m.group("meta").split(";")]
    if "base64" not in meta:
        raise _refused(kind, shown, "data: URIs must be base64-encoded", hint="Use data:<type>;base64,<payload>.")
    payload = re.sub(r"\s+", "", m.group("data"))
    if (len(payload) * 3) // 4 > cap + 3:
        raise _too_large(kind, shown, cap, (len(payload) * 3) // 4)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (binascii.Error, ValueError):
            raise _refused(kind, shown, "invalid base64 payload") from None
    if len(raw) > cap:
        raise _too_large(kind, shown, cap, len(raw))
    if not raw:
        raise _refused(kind, shown, "empty payload")
    tmp.write_bytes(raw)
    return len(raw)


# ---------------------------------------------------------------------------------------
# HTTP(S)


class _Transient(Exception):
    """A failure worth another attempt (connection trouble, 5xx, 429)."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _fetch_http(ref: str, shown: str, tmp: Path, policy: FetchPolicy, kind: str) -> int:
    schemes = {"https", "http"} if policy.allow_http else {"https"}
    cap = policy.cap(kind)
    deadline = time.monotonic() + policy.total_timeout_s
    timeout = httpx.Timeout(
        connect=policy.connect_timeout_s, read=policy.read_timeout_s, write=policy.read_timeout_s, pool=policy.connect_timeout_s
    )

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        delay = policy.backoff_s * (2 ** (state.attempt_number - 1))
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, policy.max_retry_after_s))
        return max(0.0, min(delay, deadline - time.monotonic()))

    transport = GuardedTransport(policy.net, verify=policy.verify_tls)
    with httpx.Client(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        timeout=timeout,
        headers={"User-Agent": policy.user_agent, "Accept-Encoding": "identity"},
    ) as client:
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(max(1, policy.attempts)) | stop_after_delay(policy.total_timeout_s),
                wait=wait,
                retry=retry_if_exception_type(_Transient),
                reraise=True,
            ):
                with attempt:
                    return _http_attempt(client, ref, shown, tmp, policy, kind, schemes, cap, deadline)
        except _Transient as exc:
            raise _failed(
                kind,
                shown,
                f"{exc.reason} (after {policy.attempts} attempt(s))",
                hint="The server is unreachable or failing; check the URL or try again later.",
                status=exc.status,
            ) from None
    raise AssertionError("unreachable")


def _http_attempt(
    client: httpx.Client,
    ref: str,
    shown: str,
    tmp: Path,
    policy: FetchPolicy,
    kind: str,
    schemes: set[str],
    cap: int,
    deadline: float,
) -> int:
    url_shown = shown
    try:
        url = vet_url(ref, policy.net, schemes)
        for _hop in range(policy.max_redirects + 1):
            with client.stream("GET", url) as resp:
                status = resp.status_code
                if status in _REDIRECTS:
                    location = resp.headers.get("location")
                    if not location:
                        raise _failed(kind, shown, f"HTTP {status} redirect without a Location header")
                    try:
                        nxt = url.join(location)
                    except (httpx.InvalidURL, UnicodeError, ValueError):
                        raise MalformedURL("", "the redirect's Location is not a valid URL") from None
                    url_shown = redact_ref(str(nxt))
                    url = vet_url(nxt, policy.net, schemes)
                    continue
                if status == 429 or status >= 500:
                    raise _Transient(f"HTTP {status}", _retry_after(resp.headers.get("retry-after")), status)
                if status >= 400:
                    raise _failed(
                        kind,
                        shown,
                        f"HTTP {status}",
                        hint="Check that the URL is right and publicly readable (presigned URLs expire).",
                        status=status,
                    )
                if status != 200:
                    raise _failed(kind, shown, f"unexpected HTTP {status}", status=status)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cap:
                    raise _too_large(kind, shown, cap, int(declared))
                return _stream_to(resp.iter_raw(_CHUNK), tmp, cap, kind, shown, deadline)
        raise _failed(kind, shown, f"more than {policy.max_redirects} redirects")
    except MalformedURL as exc:
        where = "" if url_shown == shown else f" (redirected to {url_shown})"
        raise _refused(
            kind, shown, f"malformed URL: {exc.reason}{where}",
            hint="Check the URL: a host is letters, digits and hyphens, labels of at most 63 characters.",
            reason="malformed_url",
        ) from None
    except AddressRefused as exc:
        where = "" if url_shown == shown else f" (redirected to {url_shown})"
        raise _refused(
            kind,
            shown,
            f"{exc.reason}{where}",
            hint="Only public https:// URLs can be fetched." + ("" if policy.allow_http else " http:// is disabled."),
            reason="address_refused",
        ) from None
    except socket.gaierror as exc:
        raise _Transient(f"DNS lookup failed ({exc.strerror or exc})") from None
    except httpx.TimeoutException as exc:
        raise _Transient(f"timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise _Transient(f"connection failed ({type(exc).__name__})") from None
    except (httpx.InvalidURL, UnicodeError):
        raise _refused(kind, shown, "invalid URL", reason="malformed_url") from None


def _stream_to(chunks: Any, tmp: Path, cap: int, kind: str, shown: str, deadline: float | None) -> int:
    """Write chunks to `tmp`, stopping as soon as the cap or the deadline is passed."""
    total = 0
    with open(tmp, "wb") as out:
        for chunk in chunks:
            total += len(chunk)
            if total > cap:
                raise _too_large(kind, shown, cap)
            if deadline is not None and time.monotonic() > deadline:
                raise _failed(kind, shown, "took longer than the total download time limit", reason="timeout")
            out.write(chunk)
    if total == 0:
        raise _failed(kind, shown, "empty response")
    return total


# ---------------------------------------------------------------------------------------
# s3://bucket/key


def _fetch_s3(ref: str, shown: str, tmp: Path, policy: FetchPolicy, kind: str) -> int:
    m = re.match(r"^s3://([^/]+)/(.+)$", ref, re.I)
    if not m:
        raise _refused(kind, shown, "expected s3://bucket/key")
    bucket, key = m.group(1), m.group(2)
    if policy.s3 is None:
        raise _refused(kind, shown, "s3:// refs are not enabled on this worker", hint="Set S3_* settings or use https://.")
    problem = s3_key_problem(key)
    if problem:
        raise _refused(kind, shown, problem, reason="s3_key")
    if not s3_ref_allowed(bucket, key, policy.s3_allowed_prefixes):
        allowed = ", ".join(f"s3://{p}" for p in policy.s3_allowed_prefixes) or "none on this worker"
        raise _refused(
            kind, shown, "outside the S3 locations inputs may come from",
            hint=f"Upload inputs under {allowed}, or use an https:// URL.", reason="s3_not_allowed",
        )
    from botocore.exceptions import BotoCoreError, ClientError

    from worker.storage.s3 import AUTH_ERROR_CODES, make_s3_client, s3_error_code

    cap = policy.cap(kind)
    client = make_s3_client(policy.s3)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        size = int(head.get("ContentLength", 0))
        if size > cap:
            raise _too_large(kind, shown, cap, size)
        obj = client.get_object(Bucket=bucket, Key=key)
        body = obj["Body"]
        try:
            return _stream_to(iter(lambda: body.read(_CHUNK), b""), tmp, cap, kind, shown, time.monotonic() + policy.total_timeout_s)
        finally:
            body.close()
    except ClientError as exc:
        code = s3_error_code(exc) or "error"
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise _failed(kind, shown, "no such object", hint="Check the bucket and key.", s3_error=code) from None
        if code in AUTH_ERROR_CODES:
            raise _failed(
                kind, shown, f"access denied ({code})", hint="The worker's S3 credentials cannot read this object.", s3_error=code
            ) from None
        raise _failed(kind, shown, f"S3 error {code}", s3_error=code) from None
    except BotoCoreError as exc:
        raise _failed(kind, shown, f"S3 request failed ({type(exc).__name__})") from None


_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def s3_key_problem(key: str) -> str | None:
    """Keys that some S3-compatible servers normalise (so a prefix check on them proves nothing)."""
    if _KEY_CONTROL.search(key):
        return "S3 key contains control characters or backslashes"
    if any(seg in ("", ".", "..") for seg in key.split("/")[:-1]) or key.split("/")[-1] in (".", ".."):
        return "S3 key contains empty, '.' or '..' segments"
    return None


def s3_ref_allowed(bucket: str, key: str, allowed: tuple[str, ...]) -> bool:
    """True when bucket/key lies under one of the "bucket/prefix" entries."""
    for entry in allowed:
        b, _, prefix = entry.partition("/")
        if b == bucket and key.startswith(prefix):
            return True
    return False


# ---------------------------------------------------------------------------------------
# Volume paths


def vet_volume_path(ref: str, policy: FetchPolicy, kind: str) -> Path:
    """The real path a volume ref names once every rule holds (under an allowed root, no '..', no symlink
    out, not in the worker's own folders); raises the same errors as fetching it would."""
    return _vet_volume(ref, redact_ref(ref), policy, kind)


def _vet_volume(ref: str, shown: str, policy: FetchPolicy, kind: str) -> Path:
    if "\x00" in ref:
        raise _refused(kind, shown, "invalid path")
    raw = Path(ref)
    if any(part == ".." for part in raw.parts):
        raise _refused(kind, shown, "'..' is not allowed in paths", reason="path_escape")
    roots = [Path(r) for r in policy.volume_roots]
    lexical_roots = [r for r in roots if _is_under(raw, Path(os.path.abspath(r)))]
    if not lexical_roots:
        raise _refused(
            kind,
            shown,
            "path is outside the allowed roots",
            hint="Use a path under " + ", ".join(str(r) for r in roots) + ".",
            reason="path_escape",
        )
    try:
        resolved = raw.resolve(strict=True)
    except FileNotFoundError:
        raise _failed(kind, shown, "no such file") from None
    except (OSError, RuntimeError) as exc:
        raise _refused(kind, shown, f"cannot resolve path ({type(exc).__name__})") from None
    real_roots = []
    for r in roots:
        try:
            real_roots.append(r.resolve(strict=True))
        except (OSError, RuntimeError):
            continue
    if not any(_is_under(resolved, r) for r in real_roots):
        raise _refused(kind, shown, "path leads outside the allowed roots (symlink)", reason="path_escape")
    for excluded in policy.volume_excluded:
        try:
            real_excluded = Path(excluded).resolve()
        except (OSError, RuntimeError):
            continue
        if _is_under(resolved, real_excluded):
            raise _refused(
                kind, shown, "path lies in the worker's results or caches, which are not inputs",
                hint="Put inputs elsewhere on the volume (e.g. /runpod-volume/inputs/).", reason="path_excluded",
            )
    return resolved


def _fetch_volume(ref: str, shown: str, tmp: Path, policy: FetchPolicy, kind: str) -> int:
    resolved = _vet_volume(ref, shown, policy, kind)
    cap = policy.cap(kind)
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait forever for a writer; the type is checked
        # on the open descriptor (no race with a swapped path) before a single byte is read.
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise _refused(kind, shown, f"the file cannot be read ({exc.strerror})", hint=_file_hint(kind), reason="unreadable") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refused(kind, shown, "not a regular file", hint=_file_hint(kind), reason="not_a_file")
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if st.st_size > cap:
            raise _too_large(kind, shown, cap, st.st_size)
        if st.st_size == 0:
            raise _refused(kind, shown, "the file is empty (0 bytes)", hint=_file_hint(kind), reason="empty_file")
        try:
            return _stream_to(_read_chunks(src), tmp, cap, kind, shown, None)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            raise _refused(kind, shown, f"the file cannot be read ({exc.strerror})", hint=_file_hint(kind), reason="unreadable") from None


def _file_hint(kind: str) -> str:
    accepted = sorted({m.split("/")[1].removeprefix("x-") for m in ACCEPTED_TYPES[kind]})
    return f"Copy the {kind} onto the volume again (a readable, non-empty {', '.join(accepted)} file) and resubmit."


def _read_chunks(f: BinaryIO) -> Any:
    while True:
        b = f.read(_CHUNK)
        if not b:
            return
        yield b


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------
# Sniffing


def _sniff(path: Path, kind: str, shown: str) -> tuple[str, str]:
    if kind == "lora":
        return _sniff_safetensors(path, shown)
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    guess = filetype.guess(head)
    mime = guess.mime if guess else None
    ext = guess.extension if guess else None
    if mime is None and kind == "audio" and _looks_like_mp3_frames(head):
        mime, ext = "audio/mpeg", "mp3"
    if mime is None or mime not in ACCEPTED_TYPES[kind]:
        found = mime or "unrecognised data"
        accepted = sorted({m.split("/")[1].removeprefix("x-") for m in ACCEPTED_TYPES[kind]})
        raise _refused(
            kind,
            shown,
            f"content is {found}, not a supported {kind}",
            hint=f"Send {'an' if kind[0] in 'aeiou' else 'a'} {kind} file ({', '.join(accepted)}).",
            reason="wrong_type",
            detected=mime,
        )
    return mime, ext or "bin"


def _sniff_safetensors(path: Path, shown: str) -> tuple[str, str]:
    from worker.inputs.safetensors_header import HeaderProblem, read_header

    try:
        read_header(path)
    except HeaderProblem as exc:
        raise _refused(
            "lora", shown, f"not a safetensors file: {exc}",
            hint="Send the LoRA as a .safetensors file (pickled .pt/.ckpt/.bin files are refused: loading one can run "
            "code).", reason="wrong_type",
        ) from None
    return "application/x-safetensors", "safetensors"


def _looks_like_mp3_frames(head: bytes) -> bool:
    """MPEG audio without an ID3 tag starts with a frame sync that filetype can miss."""
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) != 0
