"""The stage list the UI shows while a job runs: each stage with its elapsed time, the queue, ETA.

Polling /status samples the worker's progress, so a short stage can fall between two polls; the
worker's stages come in a fixed order (worker/progress.py's bands), so a later stage implies the
earlier ones finished and the list fills them in as done (their time unknown: "—").
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StageTracker", "STAGE_ORDER", "STAGE_LABELS"]

STAGE_ORDER = ("queue", "validate", "download", "audio", "load", "encode", "sampling", "decode", "mux", "upload")
STAGE_LABELS = {
    "queue": "waiting for a worker", "validate": "checking the input", "download": "fetching inputs",
    "audio": "preparing audio", "load": "loading the model", "encode": "encoding audio, text and image",
    "sampling": "generating frames", "decode": "decoding video", "mux": "writing the MP4", "upload": "delivering the result",
}


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    s = max(0.0, s)
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


@dataclass
class StageTracker:
    """Stage start times seen by this page; `clock` is injectable so tests need not sleep."""

    started: float = field(default_factory=time.monotonic)
    first_seen: dict[str, float] = field(default_factory=dict)
    current: str | None = None
    finished_at: float | None = None
    eta_s: float | None = None
    detail: str = ""
    queue_note: str = ""
    outcome: str = ""

    def see(self, status: str, stage: str | None, *, now: float | None = None, eta_s: float | None = None,
            detail: str = "") -> None:
        now = time.monotonic() if now is None else now
        if status == "IN_QUEUE":
            stage = "queue"
        if stage == "done":
            stage = None
        if stage and stage in STAGE_ORDER:
            if stage not in self.first_seen:
                self.first_seen[stage] = now
            self.current = stage
        self.eta_s = eta_s if stage == "sampling" else (self.eta_s if self.current == "sampling" else None)
        self.detail = detail

    def finish(self, outcome: str, *, now: float | None = None) -> None:
        self.finished_at = time.monotonic() if now is None else now
        self.outcome = outcome
        if outcome == "COMPLETED" and self.current is not None:
            self.current = STAGE_ORDER[-1]  # the stages after the last poll ran too: show them done
        self.eta_s = None

    def elapsed(self, now: float | None = None) -> float:
        end = self.finished_at if self.finished_at is not None else (time.monotonic() if now is None else now)
        return end - self.started

    def rows(self, now: float | None = None) -> list[tuple[str, str, str]]:
        """(stage, state, duration) for each stage this job has reached: state is done/running/skipped."""
        now = self.finished_at if self.finished_at is not None else (time.monotonic() if now is None else now)
        if self.current is None:
            return []
        reached = STAGE_ORDER.index(self.current)
        times = sorted((t, s) for s, t in self.first_seen.items())
        out = []
        for i, name in enumerate(STAGE_ORDER[: reached + 1]):
            if name not in self.first_seen:
                if name != "queue":
                    out.append((name, "done" if self.outcome == "COMPLETED" else "skipped", "—"))
                continue
            start = self.first_seen[name]
            later = [t for t, s in times if t > start or (t == start and STAGE_ORDER.index(s) > i)]
            end = min(later) if later else now
            running = name == self.current and self.finished_at is None
            state = "running" if running else ("stopped" if name == self.current and self.outcome != "COMPLETED"
                                               else "done")
            out.append((name, state, _fmt_s(end - start)))
        return out

    def to_html(self, now: float | None = None) -> str:
        head = [f"elapsed {_fmt_s(self.elapsed(now))}"]
        if self.eta_s is not None and self.eta_s > 0:
            head.append(f"about {_fmt_s(self.eta_s)} left")
        if self.queue_note and self.current == "queue":
            head.append(self.queue_note)
        items = []
        for name, state, dur in self.rows(now):
            mark = {"done": "✓", "running": "▶", "skipped": "·", "stopped": "■"}[state]
            label = STAGE_LABELS[name] if state != "skipped" else STAGE_LABELS[name] + " (quick: between two polls)"
            extra = f" — {html.escape(self.detail)}" if state == "running" and self.detail else ""
            items.append(f'<li data-stage="{name}" data-state="{state}">{mark} {html.escape(label)}{extra}'
                         f' <span class="stage-time">{dur}</span></li>')
        return (f'<div id="stage-list-box" data-elapsed="{self.elapsed(now):.1f}">'
                f'<div id="stage-head">{html.escape(" · ".join(head))}</div>'
                f'<ol id="stage-list" style="list-style:none;padding-left:0;margin:4px 0">{"".join(items)}</ol></div>')


def queue_note(health: dict[str, Any]) -> str:
    """A line on where the job waits, from /health: jobs ahead and whether a worker is starting (cold start)."""
    jobs = health.get("jobs") or {}
    workers = health.get("workers") or {}
    parts = []
    ahead = int(jobs.get("inQueue") or 0)
    if ahead:
        parts.append(f"{ahead} job{'s' if ahead != 1 else ''} queued on the endpoint")
    if int(workers.get("initializing") or 0) > 0:
        parts.append("a worker is starting (cold start, about a minute plus model loading)")
    elif not any(int(workers.get(k) or 0) for k in ("idle", "ready", "running")):
        parts.append("no worker is up yet: a cold start comes first")
    return " · ".join(parts)
