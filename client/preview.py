"""Following a job's preview from the client side (CLI `--follow`, the UI's player).

The worker stores one MPEG-TS segment per finished chunk and a growing HLS playlist (its URL or
path arrives in the job's progress as `preview`). This module fetches the playlist, downloads the
segments it has not seen yet, and keeps:
- a local copy of the segments and a playlist naming them by file name (the UI serves that folder
  to hls.js, so presigned URLs, CORS and a worker-side path never reach the browser);
- optionally one growing file, the segments appended in order: MPEG-TS is a stream format, so the
  concatenation is itself a playable video at every moment (ffplay, mpv, VLC play it as it grows).

No PyAV here: the client environment does not have it, and nothing needs decoding.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

__all__ = ["PreviewFollower", "parse_media_playlist", "preview_location"]


@dataclass
class _Entry:
    uri: str
    duration_s: float


def parse_media_playlist(text: str) -> tuple[list[_Entry], bool]:
    """(segments, ended) of an HLS media playlist; ValueError when the text is not one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("not an HLS playlist")
    out: list[_Entry] = []
    ended, pending = False, None
    for ln in lines[1:]:
        if ln.startswith("#EXTINF:"):
            pending = float(ln[8:].split(",", 1)[0])
        elif ln == "#EXT-X-ENDLIST":
            ended = True
        elif not ln.startswith("#"):
            if pending is None:
                raise ValueError("segment without #EXTINF")
            out.append(_Entry(ln, pending))
            pending = None
    return out, ended


def preview_location(preview: Any) -> str | None:
    """The playlist's URL or path from a progress/result `preview` block, or None (none yet, or off)."""
    if not isinstance(preview, dict) or not preview.get("available") or not preview.get("segments"):
        return None
    return preview.get("playlist_url") or preview.get("playlist_path")


@dataclass
class PreviewFollower:
    """Mirror a job's preview into `folder`; append each new segment to `follow_file` if given."""

    folder: Path
    follow_file: Path | None = None
    http: httpx.Client | None = None
    fetched: int = 0
    seconds: float = 0.0
    ended: bool = False
    _entries: list[_Entry] = field(default_factory=list)

    @property
    def local_playlist(self) -> Path:
        return self.folder / "index.m3u8"

    def update(self, preview: Any) -> int:
        """Fetch what is new; returns how many segments were added (0 when nothing changed or it failed)."""
        where = preview_location(preview)
        if where is None or self.ended:
            return 0
        try:
            entries, ended = parse_media_playlist(self._read(where))
        except (OSError, ValueError, httpx.HTTPError):
            return 0  # a transient miss; the next poll tries again
        added = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        for entry in entries[self.fetched:]:
            try:
                data = self._read_bytes(_resolve(where, entry.uri))
            except (OSError, httpx.HTTPError):
                break
            name = f"seg-{self.fetched:05d}.ts"
            _write_atomic(self.folder / name, data)
            if self.follow_file is not None:
                self.follow_file.parent.mkdir(parents=True, exist_ok=True)
                with self.follow_file.open("ab") as fh:
                    fh.write(data)
            self._entries.append(_Entry(name, entry.duration_s))
            self.fetched += 1
            self.seconds = round(self.seconds + entry.duration_s, 3)
            added += 1
        self.ended = ended and self.fetched == len(entries)
        if added or self.ended:
            self._write_playlist()
        return added

    def _write_playlist(self) -> None:
        target = max([1, *(int(math.floor(e.duration_s + 0.5)) for e in self._entries)])
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-MEDIA-SEQUENCE:0",
                 "#EXT-X-PLAYLIST-TYPE:EVENT"]
        for e in self._entries:
            lines += [f"#EXTINF:{e.duration_s:.3f},", e.uri]
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        _write_atomic(self.local_playlist, ("\n".join(lines) + "\n").encode())

    def _client(self) -> httpx.Client:
        if self.http is None:
            self.http = httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True)
        return self.http

    def _read(self, where: str) -> str:
        return self._read_bytes(where).decode("utf-8")

    def _read_bytes(self, where: str) -> bytes:
        if where.startswith(("http://", "https://")):
            resp = self._client().get(where, headers={"Cache-Control": "no-cache"})
            resp.raise_for_status()
            return resp.content
        return Path(where).read_bytes()  # a local worker's volume/local folder on this machine


def _resolve(playlist: str, uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return uri
    if playlist.startswith(("http://", "https://")):
        return urljoin(playlist, uri)
    return str(Path(playlist).parent / uri)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
