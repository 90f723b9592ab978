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
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.api import JobErrorInfo, JobStatus, PollPolicy, RunpodEndpointClient, is_loopback_base
from client.results import save_result
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
TTS_CHARS_PER_S = 15.0  # reading speed used to guess TTS audio length for the estimate


def _num(v: Any) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {v!r}") from None


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
        "mode": mode or None,
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
        est = estimate_job(audio_s=seconds, tier=tier, preset=preset or "quality", size=size or "infinitetalk-480",
                           mode=mode or "clip", speakers=speakers, sample_steps=_int(sample_steps),
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

    def progress_html(self) -> str:
        pct = max(0.0, min(100.0, self.percent))
        return (
            f'<div id="job-progress-box" data-status="{html.escape(self.status)}" data-percent="{pct:.1f}">'
            f'<progress id="job-progress" max="100" value="{pct:.1f}" style="width:100%;height:18px"></progress>'
            f'<div id="job-progress-label">{pct:.0f}% · {html.escape(self.status or "idle")}'
            f'{" · " + html.escape(self.label) if self.label else ""}</div></div>'
        )

    def error_markdown(self) -> str:
        if self.error is None:
            return ""
        text = f"**Error `{self.error.code}`**: {self.error.message}"
        if self.error.hint:
            text += f"\n\n**Hint:** {self.error.hint}"
        return text

    def result_markdown(self) -> str:
        if self.video_url:
            return f"[Download the MP4]({self.video_url}) (presigned URL; it expires)"
        return ""


def follow_job(
    client: RunpodEndpointClient,
    job_input: dict[str, Any],
    out_dir: Path,
    *,
    poll: PollPolicy = PollPolicy(),
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[UiUpdate]:
    """Submit through /run and yield what to show until the job ends and its video is saved."""
    up = UiUpdate(status="SUBMITTING", label="sending the request")
    yield up
    first = client.run(job_input)
    up.job_id, up.status, up.label = first.id, first.status, "queued"
    up.log.append(f"job {first.id} {first.status}")
    yield up
    last: JobStatus = first
    for last in client.poll(first.id, policy=poll, should_stop=should_stop):
        up.status = last.status
        prog = last.progress
        if prog is not None:
            if prog.percent is not None:
                up.percent = max(up.percent, float(prog.percent))
            up.label = prog.describe()
            line = f"{prog.stage}: {prog.message}" if prog.message else str(prog.stage)
            if not up.log or up.log[-1] != line:
                up.log.append(line)
        if not last.final:
            yield up
    up.final = last.final
    err = last.error_info
    if last.status == "COMPLETED" and err is None:
        up.percent, up.label = 100.0, "done"
        out = last.output if isinstance(last.output, dict) else {}
        up.video_url = out.get("video_url")
        path = save_result(out, out_dir, last.id)
        if path is None:
            up.error = JobErrorInfo(code="E_RESULT_UNREACHABLE",
                                    message=f"the worker wrote {out.get('video_path')}, which this machine cannot read",
                                    hint='Choose output "inline" (small results) or "s3".')
        else:
            up.video = str(path)
            meta = ", ".join(f"{k} {out[k]}" for k in ("duration_s", "width", "height", "seed") if k in out)
            up.log.append(f"done: {meta}")
    elif last.final:
        up.error = err or JobErrorInfo(code=f"E_{last.status}", message=f"job ended {last.status}")
        up.label = up.error.code
        up.log.append(f"{last.status}: {up.error.code}")
    else:
        up.status, up.label = "STOPPED", "stopped following (the job may still run)"
    yield up


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


def build_app(base_url: str | None = None) -> Any:
    import gradio as gr

    def _opt(label: str, **kw: Any) -> Any:
        # A text field, not gr.Number: Number shows an empty value as 0 and then fails its own
        # bounds, while here empty must mean "the preset's default".
        return gr.Textbox(value="", label=label, placeholder="default", **kw)

    poll = PollPolicy(initial_s=float(os.environ.get("INFINITETALK_UI_POLL_S", "2")))

    with gr.Blocks(title="InfiniteTalk") as app:
        gr.Markdown("# InfiniteTalk\nTalking video from an image (or a video) and speech, on Runpod Serverless or a local worker.")
        with gr.Accordion("Connection", open=True):
            with gr.Row():
                api_key = gr.Textbox(label="Runpod API key", type="password", value=os.environ.get("RUNPOD_API_KEY", ""),
                                     elem_id="api-key")
                endpoint_id = gr.Textbox(label="Endpoint ID", value=os.environ.get("RUNPOD_ENDPOINT_ID", ""),
                                         elem_id="endpoint-id")
                base = gr.Textbox(label="or base URL of a local worker", placeholder="http://127.0.0.1:8000",
                                  value=base_url or os.environ.get("INFINITETALK_BASE_URL", ""), elem_id="base-url")
            with gr.Accordion("S3 for inputs over 10 MB (else from S3_BUCKET, S3_ENDPOINT, … in the environment)", open=False):
                with gr.Row():
                    s3_bucket = gr.Textbox(label="bucket")
                    s3_endpoint = gr.Textbox(label="endpoint URL (empty: AWS)")
                    s3_region = gr.Textbox(label="region", value="us-east-1")
                    s3_access = gr.Textbox(label="access key", type="password")
                    s3_secret = gr.Textbox(label="secret key", type="password")

        with gr.Row():
            with gr.Column():
                source_kind = gr.Radio(["image", "video"], value="image", label="Reference", elem_id="source-kind")
                image = gr.Image(label="Image", type="filepath", elem_id="input-image")
                video = gr.Video(label="Video (dubbing)", visible=False, elem_id="input-video")
                speech_kind = gr.Radio(["audio", "text to speech"], value="audio", label="Speech", elem_id="speech-kind")
                audio1 = gr.Audio(label="Audio, person 1", type="filepath", elem_id="input-audio1")
                audio2 = gr.Audio(label="Audio, person 2 (optional)", type="filepath", elem_id="input-audio2")
                audio_type = gr.Radio(["add", "para"], value="add", label="Two speakers: add (in turn) or para (together)")
                tts_text = gr.Textbox(label="TTS text (mark two speakers (s1) / (s2))", lines=3, visible=False)
                with gr.Row(visible=False) as tts_voices:
                    voice1 = gr.Textbox(label="voice, speaker 1 (optional)")
                    voice2 = gr.Textbox(label="voice, speaker 2 (optional)")
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
            with gr.Column():
                with gr.Row():
                    preset = gr.Dropdown(list(SAMPLER_PRESETS), value="quality", label="Sampler preset",
                                         info=", ".join(f"{k}: {v[0]} steps" for k, v in PRESETS.items()),
                                         elem_id="preset")
                    size = gr.Dropdown(list(SIZES), value="infinitetalk-480", label="Size", elem_id="size")
                    mode = gr.Dropdown(list(MODES), value="clip", label="Mode (clip: one chunk; streaming: whole audio)")
                with gr.Accordion("Overrides (empty: the preset's / worker's default)", open=False, elem_id="overrides"):
                    with gr.Row():
                        steps = _opt("sample_steps", elem_id="steps")
                        shift = _opt("sample_shift")
                        text_scale = _opt("text_guide_scale")
                        audio_scale = _opt("audio_guide_scale")
                    with gr.Row():
                        apg = gr.Dropdown(TRISTATE, value=TRISTATE[0], label="APG")
                        teacache = gr.Dropdown(TRISTATE, value=TRISTATE[0], label="TeaCache")
                        tc_thresh = _opt("teacache_thresh")
                        guide_every = _opt("guidance_every")
                    with gr.Row():
                        frame_num = _opt("frame_num (4n+1)")
                        motion_frame = _opt("motion_frame (4n+1)")
                        max_dur = _opt("max_duration_s")
                        color = _opt("color_correction_strength")
                    with gr.Row():
                        seed = _opt("seed (empty: random)")
                        neg_prompt = gr.Textbox(label="Negative prompt")
                    with gr.Row():
                        bbox1 = gr.Textbox(label="bbox person 1 (x0 y0 x1 y1)")
                        bbox2 = gr.Textbox(label="bbox person 2 (x0 y0 x1 y1)")
                    output_target = gr.Dropdown(OUTPUT_CHOICES, value="auto", elem_id="output-target",
                                                label="Result delivery (auto: inline for a local worker, else the worker's default)")
                tier = gr.Dropdown(list(GPU_TIERS), value="h100_80", label="GPU tier (for the estimate)", elem_id="gpu-tier")
                estimate = gr.Markdown("Estimate: add audio (or TTS text) to see GPU time and cost.", elem_id="estimate")
                with gr.Row():
                    submit = gr.Button("Generate", variant="primary", elem_id="submit")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                job_id = gr.Textbox(label="Job ID", interactive=False, elem_id="job-id")
                progress = gr.HTML(UiUpdate().progress_html(), elem_id="progress")
                stages = gr.Textbox(label="Stages", lines=6, interactive=False, elem_id="stages")
                error = gr.Markdown("", elem_id="job-error")
                result = gr.Video(label="Result", interactive=False, elem_id="result-video")
                download = gr.File(label="Download", interactive=False, elem_id="result-file")
                link = gr.Markdown("", elem_id="result-link")

        source_kind.change(lambda k: (gr.update(visible=k == "image"), gr.update(visible=k == "video")),
                           source_kind, [image, video])
        speech_kind.change(
            lambda k: (gr.update(visible=k == "audio"), gr.update(visible=k == "audio"),
                       gr.update(visible=k == "audio"), gr.update(visible=k != "audio"), gr.update(visible=k != "audio")),
            speech_kind, [audio1, audio2, audio_type, tts_text, tts_voices])

        est_inputs = [tier, preset, size, mode, audio1, audio2, tts_text, audio_type, speech_kind, steps, text_scale,
                      frame_num, motion_frame, guide_every]

        def on_estimate(tier_v, preset_v, size_v, mode_v, a1, a2, tts_v, at, sk, st, ts, fn, mf, ge):
            use_tts = sk != "audio"
            return estimate_markdown(tier=tier_v, preset=preset_v, size=size_v, mode=mode_v,
                                     audio1=None if use_tts else a1, audio2=None if use_tts else a2,
                                     tts_text=tts_v if use_tts else None, audio_type=at, sample_steps=st,
                                     text_guide_scale=ts, frame_num=fn, motion_frame=mf, guidance_every=ge)

        for comp in est_inputs:
            comp.change(on_estimate, est_inputs, estimate)

        form = [api_key, endpoint_id, base, s3_bucket, s3_endpoint, s3_region, s3_access, s3_secret,
                source_kind, image, video, speech_kind, audio1, audio2, audio_type, tts_text, voice1, voice2, prompt, neg_prompt,
                preset, size, mode, steps, shift, text_scale, audio_scale, apg, teacache, tc_thresh, guide_every, frame_num,
                motion_frame, max_dur, color, seed, bbox1, bbox2, output_target]
        outputs = [job_id, progress, stages, error, result, download, link]

        def render(up: UiUpdate) -> tuple:
            return (up.job_id, up.progress_html(), "\n".join(up.log), up.error_markdown(),
                    up.video, up.video, up.result_markdown())

        def on_submit(*values: Any):
            (key, eid, burl, b_bucket, b_endpoint, b_region, b_access, b_secret, sk, img, vid, spk, a1, a2, at, tts_v,
             v1, v2, pr, npr, pre, sz, md, st, sh, ts, au, apg_v, tc_v, tct, ge, fn, mf, mdur, col, sd, bb1, bb2, tgt) = values
            up = UiUpdate(status="PREPARING")
            try:
                client = _client_from_form(key, eid, burl)
                use_tts = spk != "audio"
                two = bool(a2) and not use_tts
                params = collect_params(
                    prompt=pr, negative_prompt=npr, size=sz, mode=md, preset=pre, sample_steps=st, sample_shift=sh,
                    text_guide_scale=ts, audio_guide_scale=au, use_apg=apg_v, use_teacache=tc_v, teacache_thresh=tct,
                    guidance_every=ge,
                    frame_num=fn, motion_frame=mf, max_duration_s=mdur, color_correction_strength=col, seed=sd,
                    audio_type=at if two else None, bbox1=bb1, bbox2=bb2 if two else None, output_target=tgt,
                    local=is_loopback_base(client.endpoint_url))
                media = MediaSpec(image=img if sk == "image" else None, video=vid if sk == "video" else None,
                                  audio1=None if use_tts else a1, audio2=a2 if two else None,
                                  tts_text=tts_v if use_tts else None, tts_voice=(v1 or None) if use_tts else None,
                                  tts_voice2=(v2 or None) if use_tts else None)
                job, reports = build_job_input(media, params, limit_bytes=RUN_LIMIT_BYTES,
                                               s3=_s3_from_form(b_bucket, b_endpoint, b_region, b_access, b_secret))
                up.log.extend(f"{r.field}: {r.how}" + (f" ({r.bytes / 1e6:.2f} MB)" if r.bytes else "") for r in reports)
            except (ValueError, FileNotFoundError) as exc:
                up.error = JobErrorInfo(code="E_INPUT_VALIDATION", message=str(exc), hint="Fix the form and submit again.")
                up.status = "NOT SUBMITTED"
                yield render(up)
                return
            # Cancel goes through the endpoint; this loop then sees CANCELLED and shows it.
            try:
                with client:
                    for step in follow_job(client, job, _out_dir(), poll=poll):
                        step.log[:0] = [line for line in up.log if line not in step.log]
                        up = step
                        yield render(step)
            except Exception as exc:  # noqa: BLE001 - shown to the user instead of a Gradio error toast
                up.error = JobErrorInfo(code="E_CLIENT", message=str(exc),
                                        hint="Check the connection fields; the endpoint may be unreachable.")
                yield render(up)

        def on_cancel(key: str, eid: str, burl: str, jid: str) -> str:
            if not jid:
                return "**Nothing to cancel.**"
            try:
                with _client_from_form(key, eid, burl) as client:
                    st = client.cancel(jid)
                return f"Cancel requested: job `{jid}` is {st.status}."
            except Exception as exc:  # noqa: BLE001
                return f"**Cancel failed:** {exc}"

        submit.click(on_submit, form, outputs)
        cancel.click(on_cancel, [api_key, endpoint_id, base, job_id], error)
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, *, base_url: str | None = None) -> None:
    app = build_app(base_url=base_url)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, allowed_paths=[str(_out_dir())], show_error=True)
