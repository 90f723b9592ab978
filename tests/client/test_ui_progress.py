"""client/ui_progress.py: the stage list (elapsed per stage, stages between two polls, ETA, queue note)."""
from __future__ import annotations

from client.ui_progress import STAGE_ORDER, StageTracker, queue_note


def test_stages_between_polls_are_filled_in_and_timed() -> None:
    t = StageTracker(started=0.0)
    t.see("IN_QUEUE", None, now=0.5)
    t.see("IN_PROGRESS", "load", now=2.0)
    t.see("IN_PROGRESS", "sampling", now=5.0, eta_s=30)
    rows = t.rows(now=9.0)
    names = [r[0] for r in rows]
    assert names == list(STAGE_ORDER[: STAGE_ORDER.index("sampling") + 1])
    assert dict((n, s) for n, s, _ in rows)["validate"] == "skipped"
    assert rows[0] == ("queue", "done", "1.5 s") and ("load", "done", "3.0 s") in rows
    assert rows[-1] == ("sampling", "running", "4.0 s")
    html = t.to_html(now=9.0)
    assert "elapsed 9.0 s" in html and "about 30.0 s left" in html and 'data-state="running"' in html
    t.see("IN_PROGRESS", "mux", now=12.0)
    assert t.eta_s is None
    t.finish("COMPLETED", now=13.0)
    rows = t.rows()
    assert [r[0] for r in rows] == list(STAGE_ORDER) and all(s == "done" for _, s, _ in rows)
    assert t.elapsed() == 13.0 and ("upload", "done", "—") in rows
    c = StageTracker(started=0.0)
    c.see("IN_PROGRESS", "sampling", now=1.0)
    c.finish("CANCELLED", now=2.0)
    assert c.rows()[-1][1] == "stopped"


def test_queue_note_tells_cold_start_and_jobs_ahead() -> None:
    assert "cold start" in queue_note({"jobs": {"inQueue": 3}, "workers": {"initializing": 1}})
    assert "3 jobs queued" in queue_note({"jobs": {"inQueue": 3}, "workers": {"initializing": 1}})
    assert "no worker is up" in queue_note({"jobs": {}, "workers": {}})
    assert queue_note({"jobs": {"inQueue": 0}, "workers": {"idle": 1}}) == ""
