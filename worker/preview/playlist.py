"""The HLS media playlist of a job's preview (RFC 8216), written again after every segment.

`#EXT-X-PLAYLIST-TYPE:EVENT` tells a player that segments are only appended, so it keeps polling
and may seek back to the start; `#EXT-X-ENDLIST` is added when the job ends (done or stopped).
Each entry's URI is what the store hands out for that object: a presigned URL on S3 (a player
cannot sign requests, so every segment's own signature has to be written into the playlist), a
public URL, or the file name next to the playlist on a volume or local folder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["SegmentEntry", "Playlist", "parse_playlist"]


@dataclass(frozen=True)
class SegmentEntry:
    uri: str
    duration_s: float
    frames: int


@dataclass
class Playlist:
    segments: list[SegmentEntry] = field(default_factory=list)
    ended: bool = False

    @property
    def seconds(self) -> float:
        return round(sum(s.duration_s for s in self.segments), 3)

    def render(self) -> str:
        # EXT-X-TARGETDURATION must be >= every segment's duration rounded to the nearest integer.
        target = max([1, *(int(math.floor(s.duration_s + 0.5)) for s in self.segments)])
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-MEDIA-SEQUENCE:0",
                 "#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-INDEPENDENT-SEGMENTS"]
        for s in self.segments:
            lines += [f"#EXTINF:{s.duration_s:.3f},", s.uri]
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


def parse_playlist(text: str) -> Playlist:
    """Read a media playlist back (tests, and a check of what we write); raises ValueError when it is
    not one: no #EXTM3U header, an #EXTINF without a URI, a duration over the target duration."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("not an HLS playlist: the first line must be #EXTM3U")
    target: int | None = None
    pl = Playlist()
    pending: float | None = None
    for ln in lines[1:]:
        if ln.startswith("#EXT-X-TARGETDURATION:"):
            target = int(ln.split(":", 1)[1])
        elif ln.startswith("#EXTINF:"):
            pending = float(ln.split(":", 1)[1].split(",", 1)[0])
        elif ln == "#EXT-X-ENDLIST":
            pl.ended = True
        elif ln.startswith("#"):
            continue
        else:
            if pending is None:
                raise ValueError(f"segment URI without #EXTINF: {ln[:80]}")
            pl.segments.append(SegmentEntry(uri=ln, duration_s=pending, frames=0))
            pending = None
    if pending is not None:
        raise ValueError("#EXTINF at the end with no URI")
    if target is None:
        raise ValueError("#EXT-X-TARGETDURATION is missing")
    for s in pl.segments:
        if int(math.floor(s.duration_s + 0.5)) > target:
            raise ValueError(f"segment of {s.duration_s} s is longer than the target duration {target} s")
    return pl
