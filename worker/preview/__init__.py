"""Progressive output of a streaming job: one HLS segment per finished chunk, a growing playlist,
a partial MP4 when the job stops early. See docs/DESIGN.md ("Preview while rendering")."""
from __future__ import annotations

from worker.preview.partial import assemble_mp4
from worker.preview.playlist import Playlist, SegmentEntry, parse_playlist
from worker.preview.segment import SegmentPlan, encode_segment

__all__ = ["Playlist", "SegmentEntry", "parse_playlist", "SegmentPlan", "encode_segment", "assemble_mp4"]
