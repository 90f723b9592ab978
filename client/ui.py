"""The Gradio web UI: connect, upload, set parameters, see the estimate, submit, follow, watch.

Run it with `infinitetalk ui` or `python -m client ui` (from the client environment, which
has gradio; the worker's environment has runpod, and the two cannot share one).

How the finished video reaches the page: the UI always downloads it to its own folder
(`INFINITETALK_UI_OUT`, default a temp folder) and lets Gradio serve that file, so the video
plays inline and the download link works whatever the worker returned:
- `video_url` (S3): downloaded through the presigned URL (also shown as a link);
- `video_base64` (inline): decoded. With output "auto" and a loopback base URL the UI asks
  for `{"target": "inline"}`, because a local worker's default (a path on its own disk) need
  not be readable by the UI (another container, another user). The worker refuses inline
  results over its `inline_max_bytes` (8 MiB) with E_UPLOAD: choose "local" or "s3" then;
- `video_path` (local/volume): copied when this machine can read it.

The logic lives in plain functions (`collect_params`, `estimate_markdown`, `follow_job`) that
import no gradio, so they are tested in the worker's environment too; `build_app` wires them up.
"""
from __future__ import annotations

import html
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.api import JobErrorInfo, JobStatus, PollPolicy, RunpodEndpointClient, is_loopback_base
from client.results import save_result
from client.ui_checks import check_upload
from client.ui_extras import ASPECT_DEFAULT, _num, extra_media, extra_params
from contract.choices import ASPECTS, AUDIO_MUX_CHOICES
from client.ui_history import choices, find, render_html, upsert
from client.ui_preview import PLAYER_HTML, STATIC_DIR, file_url, head_html
from client.ui_progress import StageTracker, queue_note
from client.preview import PreviewFollower
from client.ui_setup import (
    DEFAULT_VOICES,
    EXAMPLES_DIR,
    KOKORO_VOICES,
    SETUPS,
    Example,
    load_examples,
    setup_for,
    visible_inputs,
)
from client.estimate import GPU_TIERS, PRESETS, estimate_job, format_estimate, media_duration_s
from client.payload import (
    MODES,
    RUN_LIMIT_BYTES,
    SAMPLER_PRESETS,
    SIZES,
    MediaSpec,
    S3UploadConfig,
    build_job_input,
)

__all__ = ["collect_params", "estimate_markdown", "follow_job", "UiUpdate", "build_app", "launch"]

OUTPUT_CHOICES = ["auto", "inline", "s3", "local", "volume"]
TRISTATE = ["preset default", "on", "off"]
UPLOADS_OK = "✓ Uploads checked."  # shown once the checks of what is uploaded have run and found nothing
TTS_CHARS_PER_S = 15.0  # reading speed used to guess TTS audio length for the estimate
# The form's preset and mode start as the user's guide recommends: 8 steps ("fast"), and the mode
# left to the worker, which renders the whole speech unless asked for one clip.
UI_DEFAULT_PRESET = "fast" if "fast" in SAMPLER_PRESETS else SAMPLER_PRESETS[0]
MODE_DEFAULT = "default (whole speech)"


def _mode(v: str | None) -> str | None:
    return None if not v or v == MODE_DEFAULT else v


def _int(v: Any) -> int | None:
    f = _num(v)
    return None if f is None else int(round(f))


def _tristate(v: Any) -> bool | None:
    return {"on": True, "off": False}.get(str(v or ""))


def _bbox(text: str | None) -> list[float] | None:
    if not text or not text.strip():
        return None
    parts = [p for p in text.replace(",", " ").split() if p]
    if len(parts) != 4:
        raise ValueError(f"a bbox is four numbers x0 y0 x1 y1, got {text!r}")
    return [float(p) for p in parts]


def collect_params(
    *, prompt: str = "", negative_prompt: str = "", size: str | None = None, mode: str | None = None,
    preset: str | None = None, sample_steps: Any = None, sample_shift: Any = None, text_guide_scale: Any = None,
    audio_guide_scale: Any = None, use_apg: Any = None, use_teacache: Any = None, teacache_thresh: Any = None,
    guidance_every: Any = None, frame_num: Any = None, motion_frame: Any = None, max_duration_s: Any = None,
    color_correction_strength: Any = None, seed: Any = None, audio_type: str | None = None,
    bbox1: str | None = None, bbox2: str | None = None, output_target: str = "auto", local: bool = False,
) -> dict[str, Any]:
    """The job's parameters from the form; an empty field means the preset's or worker's default."""
    params: dict[str, Any] = {
        "prompt": prompt or None,
        "negative_prompt": negative_prompt or None,
        "size": size or None,
        "mode": _mode(mode),
        "sampler": preset or None,
        "sample_steps": _int(sample_steps),
        "sample_shift": _num(sample_shift),
        "text_guide_scale": _num(text_guide_scale),
        "audio_guide_scale": _num(audio_guide_scale),
        "use_apg": _tristate(use_apg),
        "use_teacache": _tristate(use_teacache),
        "teacache_thresh": _num(teacache_thresh),
        "guidance_every": _int(guidance_every),
        "frame_num": _int(frame_num),
        "motion_frame": _int(motion_frame),
        "max_duration_s": _num(max_duration_s),
        "color_correction_strength": _num(color_correction_strength),
        "seed": _int(seed) if _num(seed) is not None and _num(seed) >= 0 else None,
        "audio_type": audio_type or None,
    }
    boxes = {k: b for k, b in (("person1", _bbox(bbox1)), ("person2", _bbox(bbox2))) if b}
    if boxes:
        params["bbox"] = boxes
    target = None if output_target in (None, "", "auto") else output_target
    if target is None and local:
        target = "inline"
    if target:
        params["output"] = {"target": target}
    return {k: v for k, v in params.items() if v is not None}


def estimate_markdown(*, tier: str, preset: str | None, size: str | None, mode: str | None, audio1: str | None,
                      audio2: str | None = None, tts_text: str | None = None, audio_type: str | None = None,
                      sample_steps: Any = None, text_guide_scale: Any = None, frame_num: Any = None,
                      motion_frame: Any = None, guidance_every: Any = None) -> str:
    """The estimate line shown before submitting (or why there is none yet)."""
    durations = [d for d in (media_duration_s(a) if a else None for a in (audio1, audio2)) if d is not None]
    if tts_text and tts_text.strip():
        seconds = len(tts_text) / TTS_CHARS_PER_S
        speakers = 2 if "(s2)" in tts_text.lower() else 1
    elif durations:
        speakers = len(durations)
        seconds = sum(durations) if (audio_type or "add") == "add" and speakers == 2 else max(durations)
    else:
        return "Estimate: add audio (or TTS text) to see GPU time and cost."
    try:
        est = estimate_job(audio_s=seconds, tier=tier, preset=preset or UI_DEFAULT_PRESET,
                           size=size or "infinitetalk-480", mode=_mode(mode) or "streaming", speakers=speakers, sample_steps=_int(sample_steps),
                           text_guide_scale=_num(text_guide_scale), frame_num=_int(frame_num),
                           motion_frame=_int(motion_frame), guidance_every=_int(guidance_every))
    except ValueError as exc:
        return f"Estimate unavailable: {exc}"
    return f"Estimate ({seconds:.1f} s of audio): " + format_estimate(est)


@dataclass
class UiUpdate:
    """What the page shows at one moment of a job."""

    job_id: str = ""
    status: str = ""
    percent: float = 0.0
    label: str = ""
    log: list[str] = field(default_factory=list)
    video: str | None = None
    video_url: str | None = None
    error: JobErrorInfo | None = None
    final: bool = False
    stages: StageTracker = field(default_factory=StageTracker)
    output: dict[str, Any] = field(default_factory=dict)
    execution_ms: int | None = None
    preview_playlist: str | None = None  # the local mirror of the job's HLS preview (client/ui_preview.py)
    preview_note: str = ""

    def progress_html(self) -> str:
        pct = max(0.0, min(100.0, self.percent))
        return (
            f'<div id="job-progress-box" data-status="{html.escape(self.status)}" data-percent="{pct:.1f}"'
            f' data-preview="{html.escape(file_url(self.preview_playlist)) if self.preview_playlist else ""}"'
            f' data-final="{1 if self.video else 0}">'
            f'<progress id="job-progress" max="100" value="{pct:.1f}" style="width:100%;height:18px"></progress>'
            f'<div id="job-progress-label">{pct:.0f}% · {html.escape(self.status or "idle")}'
            f'{" · " + html.escape(self.label) if self.label else ""}</div></div>'
        )

    @property
    def cancelled(self) -> bool:
        return self.status == "CANCELLED"

    def error_markdown(self) -> str:
        if self.cancelled:
            return "**Cancelled.** The job was stopped at your request."
        if self.error is None:
            return ""
        if self.status == "NOT SUBMITTED":  # refused in the page: nothing reached the endpoint
            text = f"**Not sent.** {self.error.message}"
        else:
            text = f"**Error `{self.error.code}`**: {self.error.message}"
        if self.error.hint:
            text += f"\n\n**Hint:** {self.error.hint}"
        return text

    def result_markdown(self) -> str:
        lines = []
        out = self.output
        if self.video:
            facts = [f"{out['duration_s']:.2f} s" if isinstance(out.get("duration_s"), (int, float)) else "",
                     f"{out.get('width')}x{out.get('height')}" if out.get("width") else "",
                     f"seed {out['seed']}" if "seed" in out else ""]
            lines.append(" · ".join(f for f in facts if f))
        if out.get("truncated"):
            dropped = out.get("truncated_s") or out.get("dropped_s")
            lines.append("**Shortened:** the video stops before the speech ends"
                         + (f" ({float(dropped):.1f} s dropped)" if isinstance(dropped, (int, float)) else "")
                         + '; choose mode "streaming" to render it all.')
        if isinstance(out.get("trimmed_s"), (int, float)) and out["trimmed_s"] > 0:
            lines.append(f"**Trimmed:** {out['trimmed_s']:.1f} s of silence after the speech.")
        if self.video_url:
            lines.append(f"[Download from S3]({self.video_url}) (presigned URL; it expires)")
        if self.preview_note:
            lines.append(self.preview_note)
        return "\n\n".join(lines)


def follow_job(
    client: RunpodEndpointClient,
    job_input: dict[str, Any] | None,
    out_dir: Path,
    *,
    poll: PollPolicy = PollPolicy(),
    should_stop: Callable[[], bool] | None = None,
    job_id: str | None = None,
) -> Iterator[UiUpdate]:
    """Submit through /run (or re-attach to `job_id`) and yield what to show until the job ends and its video is saved."""
    up = UiUpdate(status="SUBMITTING", label="sending the request")
    if job_id:
        up.status, up.label, up.job_id = "ATTACHING", "asking for the job's status", job_id
        yield up
        first = client.status(job_id)
    else:
        yield up
        assert job_input is not None
        first = client.run(job_input)
    up.job_id, up.status, up.label = first.id, first.status, "queued"
    up.log.append(f"job {first.id} {first.status}")
    up.stages.see(first.status, None)
    yield up
    last: JobStatus = first
    health_at = 0.0
    preview = PreviewFollower(out_dir / "preview" / _safe_name(first.id))
    polls = client.poll(first.id, policy=poll, should_stop=should_stop) if not first.final else iter([first])
    for last in polls:
        up.status = last.status
        prog = last.progress
        if prog is not None:
            if prog.percent is not None:
                up.percent = max(up.percent, float(prog.percent))
            up.label = prog.describe()
            line = f"{prog.stage}: {prog.message}" if prog.message else str(prog.stage)
            if not up.log or up.log[-1] != line:
                up.log.append(line)
        _see_preview(up, preview, prog.preview if prog is not None else None)
        up.stages.see(last.status, prog.stage if prog else None, eta_s=prog.eta_s if prog else None,
                      detail=(prog.message or "") if prog else "")
        if last.status == "IN_QUEUE" and time.monotonic() - health_at > 5:
            health_at = time.monotonic()
            try:
                up.stages.queue_note = queue_note(client.health())
            except Exception:  # noqa: BLE001 - the note is a nicety; the job's own status still shows
                up.stages.queue_note = ""
        if not last.final:
            yield up
    up.final = last.final
    up.execution_ms = last.executionTime
    err = last.error_info
    if last.status == "COMPLETED" and err is None:
        up.percent, up.label = 100.0, "done"
        out = last.output if isinstance(last.output, dict) else {}
        up.output = {k: v for k, v in out.items() if k != "video_base64"}
        up.video_url = out.get("video_url")
        _see_preview(up, preview, out.get("preview"))
        path = save_result(out, out_dir, last.id)
        if path is None:
            up.error = JobErrorInfo(code="E_RESULT_UNREACHABLE",
                                    message="the worker saved the video on its own disk, which this machine cannot read",
                                    hint='Set "Result delivery" to "inline" (small results) or "s3" and generate again.')
        else:
            up.video = str(path)
            meta = ", ".join(f"{k} {out[k]}" for k in ("duration_s", "width", "height", "seed") if k in out)
            up.log.append(f"done: {meta}")
    elif last.status == "CANCELLED":
        up.label = "cancelled"
        up.log.append("CANCELLED by request")
    elif last.final:
        up.error = err or JobErrorInfo(code=f"E_{last.status}", message=f"job ended {last.status}")
        if up.error.partial_video:
            up.preview_note = f"**Partial video** (made before it stopped): `{up.error.partial_video}`"
        up.label = up.error.code
        up.log.append(f"{last.status}: {up.error.code}")
    else:
        up.status, up.label = "STOPPED", "stopped following (the job may still run)"
    up.stages.finish(last.status)
    yield up


def _safe_name(job_id: str) -> str:
    return "".join(ch for ch in job_id if ch.isalnum() or ch in "-_")[:96] or "job"


def _see_preview(up: UiUpdate, follower: PreviewFollower, preview: Any) -> None:
    """Mirror new segments; the page's player (client/ui_preview.py) picks the playlist up."""
    if isinstance(preview, dict) and preview.get("available") is False:
        up.preview_note = f"Preview not available: {preview.get('reason', 'off')}"
        return
    try:
        follower.update(preview)
    except OSError:
        return  # the UI's folder is full or gone: the job's final video still comes
    if follower.fetched:
        up.preview_playlist = str(follower.local_playlist)


# ---------------------------------------------------------------------------------------
# Gradio


def _client_from_form(api_key: str, endpoint_id: str, base_url: str) -> RunpodEndpointClient:
    if base_url and base_url.strip():
        return RunpodEndpointClient(base_url=base_url.strip(), endpoint_id=(endpoint_id or "").strip() or None,
                                    api_key=(api_key or "").strip() or None)
    if not (endpoint_id or "").strip():
        raise ValueError("enter a Runpod endpoint ID and API key, or a base URL for a local worker")
    return RunpodEndpointClient(endpoint_id=endpoint_id.strip(), api_key=(api_key or "").strip() or None)


def _out_dir() -> Path:
    d = Path(os.environ.get("INFINITETALK_UI_OUT") or Path(tempfile.gettempdir()) / "infinitetalk-ui")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _s3_from_form(bucket: str, endpoint: str, region: str, access_key: str, secret_key: str) -> S3UploadConfig | None:
    if bucket and bucket.strip():
        return S3UploadConfig(bucket=bucket.strip(), endpoint_url=(endpoint or "").strip() or None,
                              region=(region or "").strip() or "us-east-1",
                              access_key=(access_key or "").strip() or None,
                              secret_key=(secret_key or "").strip() or None)
    return S3UploadConfig.from_env()


def _ui_secret() -> str:
    """The key gr.BrowserState encrypts the history with, kept beside the results so a UI restart can still read it."""
    f = _out_dir() / ".history-key"
    if not f.exists():
        f.write_text(secrets.token_hex(16))
        f.chmod(0o600)
    return f.read_text().strip()


def check_form_files(setup_label: str, files: dict[str, str | None]) -> list[str]:
    """Friendly problems with the uploads that apply to this setup (empty: fine)."""
    shown = visible_inputs(setup_label)
    kinds = {"image": ("image", "Image"), "video": ("video", "Video"), "audio1": ("audio", "Audio, person 1"),
             "audio2": ("audio", "Audio, person 2")}
    problems = []
    for key, (kind, name) in kinds.items():
        if shown.get(key) and files.get(key):
            chk = check_upload(files[key], kind, name)
            if not chk.ok:
                problems.append(chk.message)
    return problems


# The form's fields, by name, in the order on_submit receives them; stored with each history entry
# (connection and S3 fields are not: they hold keys) so a job can be loaded back and submitted again.
FORM_FIELDS = ("setup", "image", "video", "audio1", "audio2", "audio_type", "tts_text", "voice1", "voice2", "prompt",
               "neg_prompt", "preset", "size", "mode", "steps", "shift", "text_scale", "audio_scale", "apg", "teacache",
               "tc_thresh", "guide_every", "frame_num", "motion_frame", "max_dur", "color", "seed", "bbox1", "bbox2",
               "output_target", "tier",
               # issue 19: framing, scenes, masks, silence, dubbing, isolation, LoRAs (client/ui_extras.py)
               "aspect", "width", "height", "scenes", "mask_file", "mask_polygon", "mask1", "mask2", "silence",
               "silence_db", "silence_min", "silence_scale", "trim", "dub_strength", "isolate", "audio_mux", "loras",
               "lora_files", "lora_scale")
FILE_FIELDS = ("image", "video", "audio1", "audio2", "mask_file", "mask1", "mask2")  # uploads: temp copies
CONN_FIELDS = ("api_key", "endpoint_id", "base", "s3_bucket", "s3_endpoint", "s3_region", "s3_access", "s3_secret")

UI_CSS = """
#result-video video { max-height: 360px; object-fit: contain; }
#stage-list li { padding: 1px 0; } #stage-list .stage-time { color: #777; float: right; }
#history-table table { font-size: 0.85em; } #history-table td, #history-table th { padding: 2px 6px; }
#input-check p { color: #b45309; }
"""


CANVAS_LABELS = {False: "Image", True: "Image: click two corners to draw the chosen person's box"}


def build_app(base_url: str | None = None) -> Any:
    import gradio as gr

    from client.ui_boxes import draw_boxes, pick_corner

    def _opt(label: str, **kw: Any) -> Any:
        # A text field, not gr.Number: Number shows an empty value as 0 and then fails its own
        # bounds, while here empty must mean "the preset's default".
        return gr.Textbox(value="", label=label, placeholder="default", **kw)

    poll = PollPolicy(initial_s=float(os.environ.get("INFINITETALK_UI_POLL_S", "2")))
    examples = load_examples()
    shown0 = visible_inputs(SETUPS[0].label)
    c: dict[str, Any] = {}

    with gr.Blocks(title="InfiniteTalk") as app:
        gr.Markdown("# InfiniteTalk\nTalking video from an image (or a video) and speech, on Runpod Serverless or a local worker.")
        with gr.Accordion("Connection", open=not base_url):
            with gr.Row():
                c["api_key"] = gr.Textbox(label="Runpod API key", type="password",
                                          value=os.environ.get("RUNPOD_API_KEY", ""), elem_id="api-key")
                c["endpoint_id"] = gr.Textbox(label="Endpoint ID", value=os.environ.get("RUNPOD_ENDPOINT_ID", ""),
                                              elem_id="endpoint-id")
                c["base"] = gr.Textbox(label="or base URL of a local worker", placeholder="http://127.0.0.1:8000",
                                       value=base_url or os.environ.get("INFINITETALK_BASE_URL", ""), elem_id="base-url")
            with gr.Accordion("S3 for inputs over 10 MB (else from S3_BUCKET, S3_ENDPOINT, … in the environment)", open=False):
                with gr.Row():
                    c["s3_bucket"] = gr.Textbox(label="bucket")
                    c["s3_endpoint"] = gr.Textbox(label="endpoint URL (empty: AWS)")
                    c["s3_region"] = gr.Textbox(label="region", value="us-east-1")
                    c["s3_access"] = gr.Textbox(label="access key", type="password")
                    c["s3_secret"] = gr.Textbox(label="secret key", type="password")

        if examples:
            with gr.Row(elem_id="examples"):
                gr.Markdown("**Examples** (one click fills the form):")
                ex_buttons = [gr.Button(ex.name, size="sm", elem_id=f"example-{ex.name.replace(' ', '-')}")
                              for ex in examples]
        else:
            ex_buttons = []

        with gr.Row():
            with gr.Column():
                c["setup"] = gr.Radio([s.label for s in SETUPS], value=SETUPS[0].label, label="What to make",
                                      elem_id="setup")
                # Uploads are plain files, checked here by their content: gr.Image would decode a
                # non-image itself and show the library's exception with the temp path.
                c["image"] = gr.File(label="Image (PNG, JPEG, WebP)", type="filepath", elem_id="input-image",
                                     visible=shown0["image"], height=90)
                c["video"] = gr.File(label="Video to dub (MP4, MOV, WebM)", type="filepath", elem_id="input-video",
                                     visible=shown0["video"], height=90)
                c["audio1"] = gr.File(label="Audio, person 1 (WAV, MP3, FLAC, OGG, M4A)", type="filepath",
                                      elem_id="input-audio1", visible=shown0["audio1"], height=90)
                c["audio2"] = gr.File(label="Audio, person 2", type="filepath", elem_id="input-audio2",
                                      visible=shown0["audio2"], height=90)
                c["audio_type"] = gr.Radio([("in turn (add)", "add"), ("at the same time (para)", "para")], value="add",
                                           label="Two speakers talk", visible=shown0["audio_type"], elem_id="audio-type")
                check_md = gr.Markdown("", elem_id="input-check")
                c["tts_text"] = gr.Textbox(label="Text to speak (two speakers: mark turns with (s1) and (s2))", lines=3,
                                           visible=shown0["tts_text"], elem_id="tts-text")
                with gr.Row():
                    c["voice1"] = gr.Dropdown(list(KOKORO_VOICES), value=DEFAULT_VOICES[0], allow_custom_value=True,
                                              label="Voice, speaker 1", visible=shown0["voice1"], elem_id="voice1")
                    c["voice2"] = gr.Dropdown(list(KOKORO_VOICES), value=DEFAULT_VOICES[1], allow_custom_value=True,
                                              label="Voice, speaker 2", visible=shown0["voice2"], elem_id="voice2")
                canvas = gr.Image(label=CANVAS_LABELS[False], interactive=False,
                                  type="filepath", elem_id="box-canvas", visible=False, height=300)
                with gr.Row(visible=shown0["boxes"]) as box_row:
                    box_target = gr.Radio([("person 1", "1"), ("person 2", "2")], value="1", label="Draw the box of",
                                          elem_id="box-target")
                    c["bbox1"] = gr.Textbox(label="box person 1 (x0 y0 x1 y1, pixels)", elem_id="bbox1")
                    c["bbox2"] = gr.Textbox(label="box person 2 (x0 y0 x1 y1, pixels)", elem_id="bbox2")
                with gr.Row(visible=shown0["speaker_masks"]) as mask_row:
                    c["mask1"] = gr.File(label="or a mask image, person 1 (white = the speaker)", type="filepath",
                                         elem_id="input-mask1", height=90)
                    c["mask2"] = gr.File(label="mask image, person 2 (instead of boxes)", type="filepath",
                                         elem_id="input-mask2", height=90)
                pending = gr.State(None)
                c["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                with gr.Accordion("Scenes: a prompt from a given second on", open=False, elem_id="scenes-box"):
                    c["scenes"] = gr.Textbox(label="One scene per line, SECONDS = TEXT (the prompt above covers the "
                                             "start)", lines=3, placeholder="12 = she walks along a beach at dusk",
                                             elem_id="scene-prompts")
                with gr.Accordion("Motion mask: where the video may move", open=False, elem_id="mask-box"):
                    with gr.Row():
                        c["mask_file"] = gr.File(label="Mask image (white = may move; the picture's shape)",
                                                 type="filepath", elem_id="input-mask", height=90)
                        c["mask_polygon"] = gr.Textbox(label="or a polygon in pixels, JSON [[x, y], …]",
                                                       elem_id="mask-polygon")
            with gr.Column():
                with gr.Row():
                    c["preset"] = gr.Dropdown(list(SAMPLER_PRESETS), value=UI_DEFAULT_PRESET, label="Sampler preset",
                                              info=", ".join(f"{k}: {v[0]} steps" for k, v in PRESETS.items()),
                                              elem_id="preset")
                    c["size"] = gr.Dropdown(list(SIZES), value="infinitetalk-480", label="Size", elem_id="size")
                    c["mode"] = gr.Dropdown([MODE_DEFAULT, *MODES], value=MODE_DEFAULT, elem_id="mode",
                                            label="Mode (streaming: the whole speech; clip: one chunk, may cut it)")
                with gr.Row():
                    c["aspect"] = gr.Dropdown([ASPECT_DEFAULT, *ASPECTS], value=ASPECT_DEFAULT, elem_id="aspect",
                                              label="Framing (width:height)")
                    c["width"] = _opt("or width (multiple of 16)", elem_id="width")
                    c["height"] = _opt("and height", elem_id="height")
                with gr.Accordion("Audio: pauses, trailing silence, voice isolation, dubbing", open=False,
                                  elem_id="audio-options"):
                    with gr.Row():
                        c["silence"] = gr.Dropdown(TRISTATE, value=TRISTATE[0], elem_id="silence-handling",
                                                   label="Rest the face in pauses (silence handling)")
                        c["silence_db"] = _opt("silence threshold, dBFS (-45)", elem_id="silence-db")
                        c["silence_min"] = _opt("shortest pause, s (0.3)", elem_id="silence-min")
                        c["silence_scale"] = _opt("audio guidance in pauses (1)", elem_id="silence-scale")
                    with gr.Row():
                        c["trim"] = gr.Checkbox(False, label="End the video when the speech ends (trim the "
                                                "trailing silence)", elem_id="trim-silence")
                        c["dub_strength"] = _opt("dub strength (video; 0-1, lower keeps more of its motion)",
                                                 elem_id="dub-strength", visible=shown0["dub_strength"])
                    with gr.Row(visible=shown0["isolation"]) as isolation_row:
                        c["isolate"] = gr.Checkbox(False, label="Isolate the voice from music and noise",
                                                   elem_id="isolate-voice")
                        c["audio_mux"] = gr.Dropdown(list(AUDIO_MUX_CHOICES), value=AUDIO_MUX_CHOICES[0],
                                                     label="Soundtrack with isolation", elem_id="audio-mux")
                with gr.Accordion("LoRAs for this job", open=False, elem_id="loras-box"):
                    c["loras"] = gr.Textbox(label="One per line, NAME_OR_URL[:SCALE] (a name in the worker's LoRA "
                                            "folder, a volume path or an https:// URL)", lines=2, elem_id="loras")
                    with gr.Row():
                        c["lora_files"] = gr.File(label="or upload .safetensors files", file_count="multiple",
                                                  type="filepath", elem_id="lora-files", height=90)
                        c["lora_scale"] = _opt("scale of the uploaded files (1)", elem_id="lora-scale")
                with gr.Accordion("Overrides (empty: the preset's / worker's default)", open=False, elem_id="overrides"):
                    with gr.Row():
                        c["steps"] = _opt("sample_steps", elem_id="steps")
                        c["shift"] = _opt("sample_shift")
                        c["text_scale"] = _opt("text_guide_scale")
                        c["audio_scale"] = _opt("audio_guide_scale")
                    with gr.Row():
                        c["apg"] = gr.Dropdown(TRISTATE, value=TRISTATE[0], label="APG")
                        c["teacache"] = gr.Dropdown(TRISTATE, value=TRISTATE[0], label="TeaCache")
                        c["tc_thresh"] = _opt("teacache_thresh")
                        c["guide_every"] = _opt("guidance_every")
                    with gr.Row():
                        c["frame_num"] = _opt("frame_num (4n+1)")
                        c["motion_frame"] = _opt("motion_frame (4n+1)")
                        c["max_dur"] = _opt("max_duration_s")
                        c["color"] = _opt("color_correction_strength")
                    with gr.Row():
                        c["seed"] = _opt("seed (empty: random)", elem_id="seed")
                        c["neg_prompt"] = gr.Textbox(label="Negative prompt")
                    c["output_target"] = gr.Dropdown(
                        OUTPUT_CHOICES, value="auto", elem_id="output-target",
                        label="Result delivery (auto: inline for a local worker, else the worker's default)")
                c["tier"] = gr.Dropdown(list(GPU_TIERS), value="h100_80", label="GPU tier (for the estimate)",
                                        elem_id="gpu-tier")
                estimate = gr.Markdown("Estimate: add audio (or TTS text) to see GPU time and cost.", elem_id="estimate")
                with gr.Row():
                    submit = gr.Button("Generate", variant="primary", elem_id="submit")
                    cancel = gr.Button("Cancel job", variant="secondary", elem_id="cancel", visible=False, size="sm")
                job_id = gr.Textbox(label="Job ID", interactive=False, elem_id="job-id")
                progress = gr.HTML(UiUpdate().progress_html(), elem_id="progress")
                stages = gr.HTML("", elem_id="stages")
                error = gr.Markdown("", elem_id="job-error")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=300):
                        gr.HTML(PLAYER_HTML, elem_id="preview-box")
                        result = gr.Video(label="Result", interactive=False, elem_id="result-video", height=360)
                    with gr.Column(scale=1, min_width=220):
                        download = gr.File(label="Download", interactive=False, elem_id="result-file", height=90)
                        link = gr.Markdown("", elem_id="result-link")
                with gr.Accordion("Log", open=False):
                    log = gr.Textbox(lines=6, interactive=False, elem_id="log", show_label=False)

        with gr.Accordion("History (kept in this browser)", open=True, elem_id="history-box"):
            history = gr.BrowserState([], storage_key="infinitetalk-history", secret=_ui_secret())
            history_html = gr.HTML(render_html([]), elem_id="history")
            with gr.Row():
                history_pick = gr.Dropdown([], value=None, allow_custom_value=True, elem_id="history-pick",
                                           label="Job (pick one, or paste a job ID to re-attach)")
                open_btn = gr.Button("Show / re-attach", elem_id="history-open", size="sm")
                edit_btn = gr.Button("Load into form to edit and submit again", elem_id="history-edit", size="sm")

        form = [c[k] for k in CONN_FIELDS + FORM_FIELDS]
        running_outputs = [job_id, progress, stages, error, result, download, link, log, history, history_html,
                           history_pick, submit, cancel]

        # --- the setup selector governs which inputs show
        governed = {"image": c["image"], "video": c["video"], "audio1": c["audio1"], "audio2": c["audio2"],
                    "audio_type": c["audio_type"], "tts_text": c["tts_text"], "voice1": c["voice1"],
                    "voice2": c["voice2"], "boxes": box_row, "speaker_masks": mask_row,
                    "dub_strength": c["dub_strength"], "isolation": isolation_row}

        def on_setup(label: str, img: str | None):
            shown = visible_inputs(label)
            canvas_up = gr.update(visible=shown["image"] and bool(img), label=CANVAS_LABELS[shown["boxes"]])
            return [gr.update(visible=shown[k]) for k in governed] + [canvas_up]

        c["setup"].change(on_setup, [c["setup"], c["image"]], [*governed.values(), canvas])

        # --- uploads checked by content as they arrive
        def on_files(label: str, img, vid, a1, a2, b1, b2):
            files = {"image": img, "video": vid, "audio1": a1, "audio2": a2}
            problems = check_form_files(label, files)
            shown = visible_inputs(label)
            uploaded = any(f for k, f in files.items() if shown[k])
            md = "\n\n".join(f"⚠ {p}" for p in problems) or (UPLOADS_OK if uploaded else "")
            img_ok = bool(img) and check_upload(img, "image", "Image").ok
            preview = draw_boxes(img, _safe_bbox(b1), _safe_bbox(b2), _out_dir()) if img_ok else None
            return md, gr.update(value=preview, visible=bool(preview) and shown["image"], label=CANVAS_LABELS[shown["boxes"]])

        file_inputs = [c["setup"], c["image"], c["video"], c["audio1"], c["audio2"], c["bbox1"], c["bbox2"]]
        # One listener for all triggers, run one at a time and always once more with the latest values: separate
        # listeners ran concurrently and could finish out of order, leaving a stale message on the page.
        gr.on([c[k].change for k in ("setup", "image", "video", "audio1", "audio2")], on_files, file_inputs,
              [check_md, canvas], trigger_mode="always_last", concurrency_limit=1)

        # --- boxes: click two corners on the image
        def on_pick(evt: gr.SelectData, target: str, corner, img, b1, b2):
            corner, box = pick_corner(corner, evt.index)
            if box is not None:
                text = " ".join(str(int(v)) for v in box)
                b1, b2 = (text, b2) if target == "1" else (b1, text)
            preview = draw_boxes(img, _safe_bbox(b1), _safe_bbox(b2), _out_dir(), corner=corner)
            return corner, b1, b2, preview

        # This module's annotations are strings (future import) and gr is local: give gradio the class.
        on_pick.__annotations__["evt"] = gr.SelectData
        canvas.select(on_pick, [box_target, pending, c["image"], c["bbox1"], c["bbox2"]],
                      [pending, c["bbox1"], c["bbox2"], canvas])

        # --- estimate
        est_keys = ("tier", "preset", "size", "mode", "audio1", "audio2", "tts_text", "audio_type", "setup", "steps",
                    "text_scale", "frame_num", "motion_frame", "guide_every")

        def on_estimate(*vals):
            v = dict(zip(est_keys, vals))
            shown = visible_inputs(v["setup"])
            audio_ok = {k: v[k] if shown[k] and v[k] and check_upload(v[k], "audio", k).ok else None
                        for k in ("audio1", "audio2")}
            return estimate_markdown(tier=v["tier"], preset=v["preset"], size=v["size"], mode=v["mode"],
                                     audio1=audio_ok["audio1"], audio2=audio_ok["audio2"],
                                     tts_text=v["tts_text"] if shown["tts_text"] else None, audio_type=v["audio_type"],
                                     sample_steps=v["steps"], text_guide_scale=v["text_scale"], frame_num=v["frame_num"],
                                     motion_frame=v["motion_frame"], guidance_every=v["guide_every"])

        gr.on([c[k].change for k in est_keys], on_estimate, [c[k] for k in est_keys], estimate,
              trigger_mode="always_last", concurrency_limit=1)  # latest values win (see the uploads above)

        # --- running a job
        def _running(up: UiUpdate, hist: list, busy: bool, entry: dict[str, Any] | None = None):
            if entry is not None and up.job_id:
                hist = upsert(hist, {"id": up.job_id, **entry})
            return (up.job_id, up.progress_html(), up.stages.to_html() if up.job_id else "", up.error_markdown(),
                    up.video, up.video, up.result_markdown(), "\n".join(up.log), hist, render_html(hist),
                    gr.update(choices=choices(hist)), gr.update(interactive=not busy),
                    gr.update(visible=busy and bool(up.job_id) and not up.final))

        def _entry(up: UiUpdate, tier: str, extra: dict[str, Any]) -> dict[str, Any]:
            e: dict[str, Any] = {"status": up.status, **extra}
            if up.final:
                e["video"] = up.video
                if isinstance(up.output.get("duration_s"), (int, float)):
                    e["duration"] = f"{up.output['duration_s']:.2f} s"
                if up.execution_ms:
                    price = GPU_TIERS.get(tier, GPU_TIERS.get("h100_80"))[1]
                    e["cost"] = f"${up.execution_ms / 1000 / 3600 * price:.4f} ({up.execution_ms / 1000:.1f} s GPU)"
                if up.error is not None:
                    e["error"] = up.error.code
            return e

        def _follow(client: RunpodEndpointClient, job: dict[str, Any] | None, hist: list, tier: str,
                    extra: dict[str, Any], *, attach: str | None = None, pre_log: list[str] | None = None):
            up = UiUpdate()
            try:
                with client:
                    for step in follow_job(client, job, _out_dir(), poll=poll, job_id=attach):
                        step.log[:0] = [line for line in (pre_log or []) if line not in step.log]
                        up = step
                        yield _running(step, hist, not step.final, _entry(step, tier, extra))
                        hist = upsert(hist, {"id": step.job_id, **_entry(step, tier, extra)}) if step.job_id else hist
            except Exception as exc:  # noqa: BLE001 - shown to the user instead of a Gradio error toast
                up.error = JobErrorInfo(code="E_CLIENT", message=_plain(exc),
                                        hint="Check the connection fields; the endpoint may be unreachable.")
                up.final = True
                yield _running(up, hist, False)

        def on_submit(*values: Any):
            v = dict(zip(CONN_FIELDS + FORM_FIELDS, values))
            hist = values[-1]
            up = UiUpdate(status="PREPARING")
            yield _running(up, hist, True)
            shown = visible_inputs(v["setup"])
            stp = setup_for(v["setup"])
            try:
                problems = check_form_files(v["setup"], v)
                if problems:
                    raise ValueError(" ".join(problems))
                client = _client_from_form(v["api_key"], v["endpoint_id"], v["base"])
                use_tts, two = stp.speech == "tts", stp.speakers == 2
                params = collect_params(
                    prompt=v["prompt"], negative_prompt=v["neg_prompt"], size=v["size"], mode=v["mode"],
                    preset=v["preset"], sample_steps=v["steps"], sample_shift=v["shift"],
                    text_guide_scale=v["text_scale"], audio_guide_scale=v["audio_scale"], use_apg=v["apg"],
                    use_teacache=v["teacache"], teacache_thresh=v["tc_thresh"], guidance_every=v["guide_every"],
                    frame_num=v["frame_num"], motion_frame=v["motion_frame"], max_duration_s=v["max_dur"],
                    color_correction_strength=v["color"], seed=v["seed"],
                    audio_type=v["audio_type"] if shown["audio_type"] else None,
                    bbox1=v["bbox1"] if shown["boxes"] else None, bbox2=v["bbox2"] if shown["boxes"] else None,
                    output_target=v["output_target"], local=is_loopback_base(client.endpoint_url))
                params.update(extra_params(
                    aspect=v["aspect"], width=v["width"], height=v["height"], scenes=v["scenes"],
                    silence_handling=_tristate(v["silence"]), silence_threshold_db=v["silence_db"],
                    silence_min_s=v["silence_min"], silence_audio_guide_scale=v["silence_scale"],
                    trim_trailing_silence=bool(v["trim"]),
                    dub_strength=v["dub_strength"] if shown["dub_strength"] else None,
                    audio_isolation=bool(v["isolate"]) and shown["isolation"], audio_mux=v["audio_mux"]))
                extras = extra_media(mask_file=v["mask_file"], mask_polygon=v["mask_polygon"],
                                     mask1=v["mask1"] if shown["speaker_masks"] else None,
                                     mask2=v["mask2"] if shown["speaker_masks"] else None,
                                     loras=v["loras"], lora_files=v["lora_files"], lora_scale=v["lora_scale"])
                if stp.source == "image" and not v["image"]:
                    raise ValueError("Image: upload the picture of the person (or people) who should talk.")
                if stp.source == "video" and not v["video"]:
                    raise ValueError("Video: upload the video to dub.")
                if use_tts and not (v["tts_text"] or "").strip():
                    raise ValueError("Text to speak: type what the person should say.")
                if not use_tts and not v["audio1"]:
                    raise ValueError("Audio, person 1: upload the speech (or choose a text-to-speech setup).")
                if not use_tts and two and not v["audio2"]:
                    raise ValueError("Audio, person 2: upload the second speaker's speech.")
                media = MediaSpec(image=v["image"] if shown["image"] else None,
                                  video=v["video"] if shown["video"] else None,
                                  audio1=None if use_tts else v["audio1"], audio2=v["audio2"] if shown["audio2"] else None,
                                  tts_text=v["tts_text"] if use_tts else None,
                                  tts_voice=(v["voice1"] or None) if use_tts else None,
                                  tts_voice2=(v["voice2"] or None) if use_tts and two else None, **extras)
                job, reports = build_job_input(media, params, limit_bytes=RUN_LIMIT_BYTES,
                                               s3=_s3_from_form(v["s3_bucket"], v["s3_endpoint"], v["s3_region"],
                                                                v["s3_access"], v["s3_secret"]))
                pre_log = [f"{r.field}: {r.how}" + (f" ({r.bytes / 1e6:.2f} MB)" if r.bytes else "") for r in reports]
            except (ValueError, FileNotFoundError) as exc:
                up.error = JobErrorInfo(code="E_INPUT_VALIDATION", message=_plain(exc),
                                        hint="Correct the field named above and press Generate again.")
                up.status = "NOT SUBMITTED"
                yield _running(up, hist, False)
                return
            except Exception as exc:  # noqa: BLE001 - e.g. the S3 upload of a large input failed
                up.error = JobErrorInfo(code="E_CLIENT", message=_plain(exc),
                                        hint="Check the S3 fields (inputs over 10 MB go through S3) and the connection.")
                up.status = "NOT SUBMITTED"
                yield _running(up, hist, False)
                return
            form_values = {k: v[k] for k in FORM_FIELDS}
            yield from _follow(client, job, hist, v["tier"], {"setup": stp.label, "form": form_values},
                               pre_log=pre_log)

        def on_cancel(key: str, eid: str, burl: str, jid: str) -> str:
            if not jid:
                return "Nothing to cancel."
            try:
                with _client_from_form(key, eid, burl) as client:
                    st = client.cancel(jid)
                return f"Cancelling job `{jid}` ({st.status}) …"
            except Exception as exc:  # noqa: BLE001
                return f"**Cancel failed:** {_plain(exc)}"

        def on_open(key: str, eid: str, burl: str, tier: str, jid: str | None, hist: list):
            jid = (jid or "").strip()
            if not jid:
                up = UiUpdate(error=JobErrorInfo(code="E_INPUT_VALIDATION", message="Pick a job from the list first.",
                                                 hint="Or paste a job ID into the field."))
                yield _running(up, hist, False)
                return
            entry = find(hist, jid) or {}
            video = entry.get("video")
            final_elsewhere = entry.get("status") in ("CANCELLED", "FAILED", "TIMED_OUT")
            if (video and Path(video).exists()) or final_elsewhere:
                up = UiUpdate(job_id=jid, status=entry["status"], video=video, final=True,
                              percent=100.0 if entry["status"] == "COMPLETED" else 0.0, label="from the history")
                if entry.get("error") and entry["status"] != "CANCELLED":
                    up.error = JobErrorInfo(code=entry["error"], message="(from the history)")
                up.log = [f"job {jid} {entry['status']} (from the history)"]
                up.stages.finish(entry["status"])
                yield _running(up, hist, False)
                return
            try:
                client = _client_from_form(key, eid, burl)
            except ValueError as exc:
                yield _running(UiUpdate(error=JobErrorInfo(code="E_INPUT_VALIDATION", message=_plain(exc))), hist, False)
                return
            yield from _follow(client, None, hist, tier, {"setup": entry.get("setup")}, attach=jid)

        def on_edit(jid: str | None, hist: list):
            entry = find(hist, (jid or "").strip())
            form_values = (entry or {}).get("form") or {}
            out = []
            for k in FORM_FIELDS:
                val = form_values.get(k)
                if k in FILE_FIELDS and val and not Path(val).exists():
                    val = None  # the upload's temp copy is gone: the user uploads again
                if k == "lora_files" and val and not all(Path(f).exists() for f in val):
                    val = None
                out.append(gr.update(value=val) if k in form_values else gr.update())
            return out

        # .then runs even when on_submit fails unexpectedly, so Generate never stays locked.
        submit.click(on_submit, [*form, history], running_outputs, concurrency_limit=None).then(
            lambda: (gr.update(interactive=True), gr.update(visible=False)), None, [submit, cancel])
        cancel.click(on_cancel, [c["api_key"], c["endpoint_id"], c["base"], job_id], error)
        open_btn.click(on_open, [c["api_key"], c["endpoint_id"], c["base"], c["tier"], history_pick, history],
                       running_outputs)
        edit_btn.click(on_edit, [history_pick, history], [c[k] for k in FORM_FIELDS])
        app.load(lambda h: (render_html(h), gr.update(choices=choices(h))), history, [history_html, history_pick])

        # --- examples: a click fills the form (then Generate runs it)
        def _example_values(ex: Example) -> list[Any]:
            vals = {"setup": ex.setup, "image": ex.image, "video": ex.video, "audio1": ex.audio1, "audio2": ex.audio2,
                    "audio_type": ex.audio_type or "add", "tts_text": ex.tts_text, "voice1": ex.voice1 or DEFAULT_VOICES[0],
                    "prompt": ex.prompt, "preset": ex.preset or UI_DEFAULT_PRESET, "mode": ex.mode or MODE_DEFAULT,
                    "seed": "" if ex.seed is None else str(ex.seed), "bbox1": ex.bbox1, "bbox2": ex.bbox2}
            return [vals[k] for k in EXAMPLE_FIELDS]

        for btn, ex in zip(ex_buttons, examples):
            btn.click(lambda ex=ex: _example_values(ex), None, [c[k] for k in EXAMPLE_FIELDS])
    return app


EXAMPLE_FIELDS = ("setup", "image", "video", "audio1", "audio2", "audio_type", "tts_text", "voice1", "prompt", "preset",
                  "mode", "seed", "bbox1", "bbox2")


def _safe_bbox(text: str | None) -> list[float] | None:
    try:
        return _bbox(text)
    except ValueError:
        return None


def _plain(exc: BaseException) -> str:
    """An exception's text for a person: no temp folders (Gradio's upload copies) in it."""
    text = str(exc)
    for root in {tempfile.gettempdir(), os.environ.get("GRADIO_TEMP_DIR") or ""} - {""}:
        text = text.replace(root.rstrip("/") + "/", "")
    return text


def launch(host: str = "127.0.0.1", port: int = 7860, *, base_url: str | None = None) -> None:
    app = build_app(base_url=base_url)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, allowed_paths=[str(_out_dir()), str(EXAMPLES_DIR), str(STATIC_DIR)],
               show_error=False, css=UI_CSS, head=head_html())
