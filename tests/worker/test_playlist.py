"""The preview's HLS playlist: what we render parses back the same, and the parser refuses what is not HLS."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.preview.playlist import Playlist, SegmentEntry, parse_playlist

uris = st.from_regex(r"(seg-[0-9]{5}\.ts|https://b\.example/k/seg-[0-9]{5}\.ts\?X-Amz-Signature=[a-f0-9]{8})", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(uris, st.floats(0.04, 12.0)), max_size=20), st.booleans())
def test_render_parses_back(entries, ended):
    pl = Playlist([SegmentEntry(u, round(d, 3), 0) for u, d in entries], ended=ended)
    text = pl.render()
    back = parse_playlist(text)
    assert [s.uri for s in back.segments] == [u for u, _ in entries]
    assert [s.duration_s for s in back.segments] == pytest.approx([round(d, 3) for _, d in entries], abs=1e-3)
    assert back.ended is ended
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text
    assert text.count("#EXT-X-ENDLIST") == int(ended)


@pytest.mark.parametrize("text", [
    "",
    "seg-00000.ts\n",
    "#EXTM3U\n#EXTINF:2.0,\n",  # EXTINF without a URI
    "#EXTM3U\n#EXTINF:2.0,\nseg.ts\n",  # no target duration
    "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:3.0,\nseg.ts\n",  # longer than the target
    "#EXTM3U\n#EXT-X-TARGETDURATION:3\nseg.ts\n",  # URI without EXTINF
])
def test_parser_refuses_broken_playlists(text):
    with pytest.raises(ValueError):
        parse_playlist(text)
