"""client/ui_history.py: the browser-kept job list (ordering, merging, bound, rendering)."""
from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from client.ui_history import MAX_ENTRIES, choices, find, render_html, upsert


@given(st.lists(st.sampled_from([f"job-{i}" for i in range(40)]), max_size=80))
def test_history_is_unique_newest_first_and_bounded(ids: list[str]) -> None:
    h: list = []
    for i in ids:
        h = upsert(h, {"id": i, "status": "IN_QUEUE"})
    got = [e["id"] for e in h]
    assert len(got) == len(set(got)) <= MAX_ENTRIES
    expected = list(dict.fromkeys(reversed(ids)))[:MAX_ENTRIES]
    assert got == expected


def test_upsert_merges_and_render_marks_playable(tmp_path: Path) -> None:
    video = tmp_path / "j1.mp4"
    video.write_bytes(b"\0\0\0\x18ftypisom")
    h = upsert(None, {"id": "j1", "status": "IN_PROGRESS", "form": {"prompt": "hi"}})
    h = upsert(h, {"id": "j1", "status": "COMPLETED", "video": str(video), "cost": "$0.0100", "error": None})
    assert find(h, "j1")["form"] == {"prompt": "hi"} and find(h, "j1")["status"] == "COMPLETED"
    html = render_html(h)
    assert 'data-job="j1"' in html and "▶ playable" in html and "$0.0100" in html
    assert choices(h)[0][1] == "j1"
    video.unlink()
    assert "▶ playable" not in render_html(h)
    assert "No jobs yet" in render_html([{"junk": 1}])
