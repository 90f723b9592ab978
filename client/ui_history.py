"""The job history the UI keeps in the browser (gr.BrowserState, i.e. localStorage): survives reloads.

Each entry holds what is needed to show the job again (status, cost, the saved video's path on the
UI's machine) and to submit it again with edits (the form's values). Plain dicts, because that is
what localStorage holds; these functions keep the list ordered, bounded and renderable.
"""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

__all__ = ["upsert", "render_html", "choices", "find", "MAX_ENTRIES"]

MAX_ENTRIES = 25


def upsert(history: list[dict[str, Any]] | None, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The history with `entry` (by its id) merged in and moved to the front; oldest dropped past MAX_ENTRIES."""
    items = [dict(e) for e in (history or []) if isinstance(e, dict) and e.get("id")]
    old = next((e for e in items if e["id"] == entry["id"]), {})
    merged = {**old, **{k: v for k, v in entry.items() if v is not None}}
    merged.setdefault("created", time.time())
    rest = [e for e in items if e["id"] != entry["id"]]
    return ([merged] + rest)[:MAX_ENTRIES]


def find(history: list[dict[str, Any]] | None, job_id: str | None) -> dict[str, Any] | None:
    return next((e for e in history or [] if isinstance(e, dict) and e.get("id") == job_id), None)


def _label(e: dict[str, Any]) -> str:
    when = time.strftime("%m-%d %H:%M", time.localtime(float(e.get("created") or 0)))
    return f"{when} · {e.get('status', '?')} · {e['id']}"


def choices(history: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    return [(_label(e), e["id"]) for e in history or [] if isinstance(e, dict) and e.get("id")]


def render_html(history: list[dict[str, Any]] | None) -> str:
    rows = []
    for e in history or []:
        if not isinstance(e, dict) or not e.get("id"):
            continue
        video = e.get("video")
        playable = bool(video) and Path(str(video)).exists()
        rows.append(
            f'<tr data-job="{html.escape(e["id"])}" data-status="{html.escape(str(e.get("status", "")))}">'
            f'<td>{html.escape(_label(e).rsplit(" · ", 2)[0])}</td><td><code>{html.escape(e["id"])}</code></td>'
            f'<td>{html.escape(str(e.get("status", "")))}</td>'
            f'<td>{html.escape(str(e.get("setup", "")))}</td>'
            f'<td>{html.escape(str(e.get("duration", "") or ""))}</td>'
            f'<td>{html.escape(str(e.get("cost", "") or ""))}</td>'
            f'<td>{"▶ playable" if playable else ""}</td></tr>')
    if not rows:
        return '<div id="history-table"><em>No jobs yet. Finished jobs appear here and stay after a reload.</em></div>'
    return ('<div id="history-table"><table><thead><tr><th>when</th><th>job</th><th>status</th><th>setup</th>'
            '<th>video</th><th>cost</th><th></th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>")
