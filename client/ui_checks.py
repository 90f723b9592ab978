"""Checks the UI runs on an uploaded file before anything is sent: what it really is, its size, its length.

The type comes from the file's first bytes, not its name: a text file renamed `.wav` must be refused
here, with a sentence a person understands, rather than by the worker after a cold start. Messages
name the field and never show the temp path Gradio stored the upload under.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.estimate import media_duration_s

__all__ = ["sniff_kind", "check_upload", "UploadCheck", "MAX_UPLOAD_BYTES", "MAX_AUDIO_S"]

MAX_UPLOAD_BYTES = 200 * 1000 * 1000  # larger inputs belong on S3/a URL, not in a browser upload
MAX_AUDIO_S = 1800.0  # the schema's ceiling on max_duration_s: longer speech could never be rendered whole

_NAMES = {"image": "an image (PNG, JPEG, WebP, BMP or GIF)", "audio": "an audio file (WAV, MP3, FLAC, OGG or M4A)",
          "video": "a video (MP4, MOV, WebM or MKV)"}


def sniff_kind(head: bytes) -> str | None:
    """'image', 'audio' or 'video' from a file's first bytes (at least 16), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff") or head[:6] in (b"GIF87a", b"GIF89a"):
        return "image"
    if head.startswith(b"BM") and head[6:10] == b"\0\0\0\0":  # BMP: its reserved header words are zero
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio"
    if head.startswith((b"ID3", b"fLaC", b"OggS")) or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "audio" if brand in (b"M4A ", b"M4B ") else "video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video"
    return None


@dataclass(frozen=True)
class UploadCheck:
    ok: bool
    message: str = ""
    duration_s: float | None = None


def check_upload(path: str | Path | None, expected: str, field: str) -> UploadCheck:
    """Whether `path` is usable as `field` (one of image/audio/video by `expected`), and why not."""
    if not path:
        return UploadCheck(True)
    p = Path(path)
    shown = p.name if len(p.name) <= 60 else p.name[:57] + "..."
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            head = fh.read(32)
    except OSError:
        return UploadCheck(False, f"{field}: the upload could not be read; upload it again.")
    if size == 0:
        return UploadCheck(False, f"{field}: {shown} is empty.")
    if size > MAX_UPLOAD_BYTES:
        return UploadCheck(False, f"{field}: {shown} is {size / 1e6:.0f} MB; the limit for an upload here is "
                                  f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB (put larger files on S3 and give its URL).")
    kind = sniff_kind(head)
    if kind != expected:
        what = "not a file type this page knows" if kind is None else f"{_NAMES[kind].split(' (')[0]}"
        return UploadCheck(False, f"{field}: {shown} is {what}, so it cannot be used here. "
                                  f"Upload {_NAMES[expected]}.")
    duration = None
    if expected == "audio":
        duration = media_duration_s(p)
        if duration is None:
            return UploadCheck(False, f"{field}: {shown} looks like audio but its length cannot be read; "
                                      "it may be damaged. Try a WAV file.")
        if duration <= 0.05:
            return UploadCheck(False, f"{field}: {shown} holds no sound ({duration:.2f} s).")
        if duration > MAX_AUDIO_S:
            return UploadCheck(False, f"{field}: {shown} is {duration:.0f} s long; one job takes at most "
                                      f"{MAX_AUDIO_S:.0f} s of speech. Cut it into parts.")
    return UploadCheck(True, duration_s=duration)
