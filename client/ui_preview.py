"""The UI's preview player: hls.js plays the job's HLS preview while it renders.

How it is wired (no gradio import here, so the logic is tested in the worker's environment too):
- `follow_job` (client/ui.py) mirrors the worker's segments into the UI's own folder with
  client/preview.py and puts the local playlist's URL (Gradio's `/gradio_api/file=` route) in the
  progress box's `data-preview` attribute; presigned URLs, CORS and worker-side paths never reach
  the browser.
- The page holds one `<video id="preview-video">`, created once (PLAYER_HTML) so that Gradio's
  re-renders of the progress box never reset playback, and a script (head_html) that watches the
  attribute, attaches hls.js to the video when a playlist appears, and hides the player once the
  job is COMPLETED and the final MP4 shows in the result video.
- hls.js is vendored in client/static/hls/ (Apache-2.0; README there says why and which version).
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

STATIC_DIR = Path(__file__).resolve().parent / "static"
HLS_JS = STATIC_DIR / "hls" / "hls.light.min.js"

__all__ = ["STATIC_DIR", "HLS_JS", "PLAYER_HTML", "file_url", "head_html"]

PLAYER_HTML = (
    '<div id="preview-wrap" style="display:none">'
    '<div id="preview-label" style="font-size:0.9em;color:#555">Preview: the video so far, while it renders</div>'
    '<video id="preview-video" muted autoplay playsinline controls '
    'style="width:100%;max-height:360px;background:#000"></video></div>'
)

_SCRIPT = """
<script>
(() => {
  let hls = null, current = null;
  const FINAL = ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"];
  function stop() {
    if (hls) { hls.destroy(); hls = null; }
    current = null;
    const wrap = document.getElementById("preview-wrap");
    if (wrap) wrap.style.display = "none";
  }
  function tick() {
    const box = document.getElementById("job-progress-box");
    const video = document.getElementById("preview-video");
    const wrap = document.getElementById("preview-wrap");
    if (!box || !video || !wrap || typeof Hls === "undefined") return;
    const src = box.dataset.preview || "";
    const status = box.dataset.status || "";
    if (status === "COMPLETED" && box.dataset.final === "1") { stop(); return; }  // the final MP4 takes over
    if (!src) { if (!FINAL.includes(status)) stop(); return; }
    if (src === current) return;
    current = src;
    if (!Hls.isSupported()) { video.src = src; } else {
      if (hls) hls.destroy();
      hls = new Hls({ startPosition: 0, liveSyncDurationCount: 1,
        // the playlist is rewritten in place: ask past any cache for it (segments never change)
        xhrSetup: (xhr, url) => { if (url.includes(".m3u8")) xhr.open("GET", url + (url.includes("?") ? "&" : "?") + "t=" + Date.now(), true); } });
      hls.loadSource(src);
      hls.attachMedia(video);
      window.__previewHls = hls;
    }
    wrap.style.display = "block";
    video.play().catch(() => {});
  }
  setInterval(tick, 400);
})();
</script>
"""


def file_url(path: str | Path) -> str:
    """The URL under which Gradio serves a file from the app's allowed paths."""
    return "/gradio_api/file=" + quote(str(Path(path).resolve()))


def head_html() -> str:
    """What goes into the page's <head>: hls.js from the app, then the script driving the player."""
    return f'<script src="{file_url(HLS_JS)}"></script>' + _SCRIPT
