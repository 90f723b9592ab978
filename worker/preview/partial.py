"""The video made so far as one playable, faststart MP4, from the preview's TS segments.

A job that stops early (timeout, a failure after some chunks) or is about to be cut off keeps what
it rendered: the segments are copied (no re-encode) into one MP4, so this costs a file copy, not
an encode, however long the video. The frames are the preview's (same settings as the final MP4).
"""
from __future__ import annotations

from pathlib import Path

import av

from worker.media.mux import _ffmpeg_error
from worker.preview.segment import ORIGIN_S

__all__ = ["assemble_mp4"]


def assemble_mp4(segments: list[Path], dest: Path) -> Path:
    """Remux `segments` (in order) into `dest` (written under a temp name, then renamed)."""
    if not segments:
        raise _ffmpeg_error("no preview segments to assemble")
    tmp = dest.with_name(f".{dest.name}.part.mp4")
    try:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            streams: dict[str, av.stream.Stream] = {}
            last_dts: dict[str, float] = {}
            for seg in segments:
                with av.open(str(seg)) as src:
                    for s in src.streams:
                        if s.type in ("video", "audio") and s.type not in streams:
                            streams[s.type] = out.add_stream_from_template(s)
                    for pkt in src.demux(*[s for s in src.streams if s.type in ("video", "audio")]):
                        kind = pkt.stream.type
                        if pkt.dts is None:
                            continue
                        # Each segment's AAC starts with its encoder's priming frame, which overlaps the
                        # previous segment's last frame by ~21 ms: a packet not after the last is dropped.
                        at = float(pkt.dts * pkt.time_base)
                        if kind in last_dts and at <= last_dts[kind]:
                            continue
                        last_dts[kind] = at
                        shift = int(round(ORIGIN_S / pkt.time_base))  # the segments' origin, back to 0
                        pkt.dts -= shift
                        if pkt.pts is not None:
                            pkt.pts -= shift
                        pkt.stream = streams[kind]
                        out.mux(pkt)
    except (av.FFmpegError, OSError, KeyError) as exc:
        tmp.unlink(missing_ok=True)
        raise _ffmpeg_error("assembling the partial MP4 failed", exc) from None
    tmp.replace(dest)
    return dest
