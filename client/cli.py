"""The remote half of `infinitetalk`: submit, status, cancel, ui (and estimate).

`infinitetalk submit --image face.png --audio speech.wav` builds the job input (small files as
data: URIs, large ones through S3, see client/payload.py), POSTs /run, follows /status with
backoff while drawing a progress bar on stderr, and downloads the MP4 to outputs/.
`--sync` uses /runsync instead (short jobs; it falls back to polling if the job outlives the wait).

Connection: `--endpoint-id` + `--api-key` for Runpod (env RUNPOD_ENDPOINT_ID, RUNPOD_API_KEY), or
`--base-url http://127.0.0.1:8000` for the local endpoint (env INFINITETALK_BASE_URL).

Exit codes: 0 done, 1 the job failed (its code and hint on stderr), 2 bad usage or input,
3 the API refused or could not be reached, 130 interrupted (the job is cancelled first).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from client.api import ApiError, JobErrorInfo, JobStatus, PollPolicy, RunpodEndpointClient
from client.flags import add_feature_flags, feature_fields
from client.preview import PreviewFollower, preview_location
from client.results import save_result
from client.payload import (
    MODES,
    OUTPUT_TARGETS,
    SAMPLER_PRESETS,
    SIZES,
    RUN_LIMIT_BYTES,
    RUNSYNC_LIMIT_BYTES,
    InvalidJobInput,
    LocalMediaError,
    MediaSpec,
    PayloadTooLarge,
    S3UploadConfig,
    build_job_input,
    is_remote_ref,
)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# ---------------------------------------------------------------------------------------
# Progress bar


class ProgressBar:
    """One line redrawn in place on a terminal; one line per change otherwise (logs, CI)."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = ""
        self.start = time.monotonic()

    def update(self, st: JobStatus) -> None:
        prog = st.progress
        if prog is not None and prog.percent is not None:
            pct = max(0.0, min(100.0, float(prog.percent)))
            label = prog.describe()
        elif st.status == "COMPLETED":
            pct, label = 100.0, "done"
        else:
            pct, label = 0.0, st.status.lower().replace("_", " ")
        filled = int(round(self.width * pct / 100))
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {pct:5.1f}% {label}"
        if line == self.last:
            return
        self.last = line
        elapsed = time.monotonic() - self.start
        if self.tty:
            self.stream.write(f"\r\x1b[2K{line} ({elapsed:.0f} s)")
        else:
            self.stream.write(f"{line} ({elapsed:.0f} s)\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------
# Results


# ---------------------------------------------------------------------------------------
# Arguments


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--endpoint-id", default=os.environ.get("RUNPOD_ENDPOINT_ID"), help="Runpod endpoint id (env RUNPOD_ENDPOINT_ID)")
    g.add_argument("--api-key", default=os.environ.get("RUNPOD_API_KEY"), help="Runpod API key (env RUNPOD_API_KEY)")
    g.add_argument("--base-url", default=os.environ.get("INFINITETALK_BASE_URL"),
                   help="a local endpoint instead of Runpod, e.g. http://127.0.0.1:8000 (env INFINITETALK_BASE_URL)")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default %(default)s)")
    g.add_argument("--retries", type=int, default=6, help="attempts per request on 429/5xx/connection errors")
    g.add_argument("--retry-unsafe", action="store_true",
                   help="also retry /run when the connection dropped after sending (may submit the job twice)")


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infinitetalk", description="Submit and follow InfiniteTalk jobs on a Runpod endpoint.")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="submit a job, follow it, download the video")
    _add_connection(s)
    media = s.add_argument_group("media (files are inlined or uploaded; URLs and worker paths pass through)")
    media.add_argument("--payload", type=Path, help="a JSON job input (or {\"input\": …}) to start from")
    media.add_argument("--image")
    media.add_argument("--video")
    media.add_argument("--audio", help="person 1's audio")
    media.add_argument("--audio2", help="person 2's audio")
    media.add_argument("--audio-type", choices=("add", "para"))
    media.add_argument("--tts-text", help="text to speak instead of audio; mark two speakers (s1) / (s2)")
    media.add_argument("--voice")
    media.add_argument("--voice2")
    gen = s.add_argument_group("generation (unset: the worker's defaults)")
    gen.add_argument("--prompt")
    gen.add_argument("--negative-prompt")
    gen.add_argument("--size", choices=SIZES)
    gen.add_argument("--mode", choices=MODES)
    gen.add_argument("--preset", dest="sampler", choices=SAMPLER_PRESETS)
    gen.add_argument("--steps", dest="sample_steps", type=int)
    gen.add_argument("--shift", dest="sample_shift", type=float)
    gen.add_argument("--text-guide", dest="text_guide_scale", type=float)
    gen.add_argument("--audio-guide", dest="audio_guide_scale", type=float)
    gen.add_argument("--apg", dest="use_apg", type=_bool, metavar="true|false")
    gen.add_argument("--teacache", dest="use_teacache", type=_bool, metavar="true|false")
    gen.add_argument("--teacache-thresh", dest="teacache_thresh", type=float)
    gen.add_argument("--guidance-every", dest="guidance_every", type=int, metavar="K",
                     help="guidance passes on every K-th step only (cheaper, approximate; default 1)")
    gen.add_argument("--frame-num", type=int)
    gen.add_argument("--motion-frame", type=int)
    gen.add_argument("--max-duration", dest="max_duration_s", type=float)
    gen.add_argument("--color-correction", dest="color_correction_strength", type=float)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--output-target", choices=OUTPUT_TARGETS, help="where the worker puts the MP4")
    add_feature_flags(s.add_argument_group("framing, scenes, masks, LoRAs, audio (unset: the worker's defaults)"))
    run = s.add_argument_group("running")
    run.add_argument("--sync", action="store_true", help="use /runsync (short jobs; 20 MB payload limit)")
    run.add_argument("--sync-wait", type=float, default=90.0, help="seconds /runsync waits before returning (max 300)")
    run.add_argument("--no-wait", action="store_true", help="print the job id and return")
    run.add_argument("--job-timeout", type=float, default=None, help="give up following after this many seconds")
    run.add_argument("--poll-interval", type=float, default=2.0, help="first /status interval in seconds")
    run.add_argument("--output-dir", type=Path, default=Path("outputs"))
    run.add_argument("--no-download", action="store_true")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the final status JSON on stdout")
    run.add_argument("--follow", type=Path, metavar="FILE",
                     help="while the job renders, append each preview segment to FILE (MPEG-TS: playable as it grows)")
    s.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="show a job's status (or follow it with --wait)")
    _add_connection(st)
    st.add_argument("job_id")
    st.add_argument("--wait", action="store_true", help="follow to the end and download the video")
    st.add_argument("--output-dir", type=Path, default=Path("outputs"))
    st.add_argument("--quiet", action="store_true")
    st.add_argument("--poll-interval", type=float, default=2.0)
    st.set_defaults(func=cmd_status)

    c = sub.add_parser("cancel", help="cancel a queued or running job")
    _add_connection(c)
    c.add_argument("job_id")
    c.set_defaults(func=cmd_cancel)

    e = sub.add_parser("estimate", help="estimate GPU time and cost of a job")
    e.add_argument("--audio-seconds", type=float)
    e.add_argument("--audio", help="read the length from this file")
    e.add_argument("--tier", default="h100_80")
    e.add_argument("--preset", default="fast", choices=SAMPLER_PRESETS)
    e.add_argument("--size", default="infinitetalk-480", choices=SIZES)
    e.add_argument("--mode", default="streaming", choices=MODES)
    e.add_argument("--speakers", type=int, default=1, choices=(1, 2))
    e.add_argument("--guidance-every", type=int, default=1, metavar="K")
    e.set_defaults(func=cmd_estimate)

    u = sub.add_parser("ui", help="start the Gradio web UI")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=7860)
    u.add_argument("--base-url", default=os.environ.get("INFINITETALK_BASE_URL"), help="prefill a local endpoint URL")
    u.set_defaults(func=cmd_ui)
    return parser


def make_client(args: argparse.Namespace) -> RunpodEndpointClient:
    return RunpodEndpointClient(
        endpoint_id=args.endpoint_id,
        api_key=args.api_key,
        base_url=args.base_url,
        timeout_s=args.timeout,
        max_attempts=max(1, args.retries),
        retry_unsafe=args.retry_unsafe,
    )


_PARAM_KEYS = (
    "prompt", "negative_prompt", "size", "mode", "sampler", "sample_steps", "sample_shift", "text_guide_scale",
    "audio_guide_scale", "use_apg", "use_teacache", "teacache_thresh", "guidance_every", "frame_num", "motion_frame",
    "max_duration_s", "color_correction_strength", "seed", "audio_type",
)


def _pop(d: dict[str, Any], *names: str) -> Any:
    found = None
    for n in names:
        if n in d:
            found = d.pop(n)
    return found


def _payload_media(base: dict[str, Any], root: Path) -> MediaSpec:
    """Take the media out of a payload file; relative local paths are relative to the file."""

    def fix(ref: Any) -> Any:
        if isinstance(ref, str) and ref and not is_remote_ref(ref) and not Path(ref).is_absolute():
            return str(root / ref)
        return ref

    audio = _pop(base, "audio", "cond_audio")
    if isinstance(audio, dict):
        a1, a2 = audio.get("person1"), audio.get("person2")
    else:
        a1, a2 = audio, None
    tts = _pop(base, "tts", "tts_audio") or {}
    masks = _pop(base, "masks") or {}
    loras = _pop(base, "loras") or []
    return MediaSpec(image=fix(_pop(base, "image", "cond_image")), video=fix(_pop(base, "video", "cond_video")),
                     audio1=fix(a1), audio2=fix(a2), tts_text=tts.get("text"),
                     tts_voice=tts.get("voice") or tts.get("human1_voice"),
                     tts_voice2=tts.get("voice2") or tts.get("human2_voice"),
                     mask=fix(_pop(base, "mask")), masks={p: fix(m) for p, m in masks.items()},
                     loras=[(fix(lo.get("ref")), lo.get("scale")) for lo in loras if isinstance(lo, dict)])


def _job_input(args: argparse.Namespace) -> dict[str, Any]:
    base: dict[str, Any] = {}
    media = MediaSpec()
    if args.payload:
        doc = json.loads(args.payload.read_text())
        base = dict(doc.get("input", doc)) if isinstance(doc, dict) else {}
        media = _payload_media(base, args.payload.resolve().parent)
    # media on the command line replace the payload's media of the same kind
    if args.image or args.video:
        media.image, media.video = args.image, args.video
    if args.audio or args.tts_text:
        media.audio1, media.audio2, media.tts_text = args.audio, args.audio2, args.tts_text
        media.tts_voice, media.tts_voice2 = args.voice, args.voice2
    elif args.audio2:
        media.audio2 = args.audio2
    params = {k: getattr(args, k) for k in _PARAM_KEYS if getattr(args, k) is not None}
    # masks and LoRAs on the command line replace the payload's; files go the way --image goes
    features, files = feature_fields(args)
    params.update(features)
    for name, value in files.items():
        setattr(media, name, value)
    if args.output_target:
        params["output"] = {**(base.get("output") or {}), "target": args.output_target}
    limit = RUNSYNC_LIMIT_BYTES if args.sync else RUN_LIMIT_BYTES
    job, reports = build_job_input(media, {**base, **params}, limit_bytes=limit, s3=S3UploadConfig.from_env())
    if not args.quiet:
        for r in reports:
            size = f" ({r.bytes / 1e6:.2f} MB)" if r.bytes else ""
            print(f"{r.field}: {r.how}{size} {r.ref_preview}", file=sys.stderr)
    return job


# ---------------------------------------------------------------------------------------
# Commands


def _follow(client: RunpodEndpointClient, job_id: str, args: argparse.Namespace, first: JobStatus | None = None) -> int:
    bar = None if args.quiet else ProgressBar()
    last = first
    try:
        if last is None or not last.final:
            if bar and last:
                bar.update(last)
            watch = PreviewWatch(getattr(args, "follow", None), job_id)
            for last in client.poll(job_id, policy=PollPolicy(initial_s=args.poll_interval),
                                    timeout_s=getattr(args, "job_timeout", None)):
                if bar:
                    bar.update(last)
                watch.see(last)
        elif bar:
            bar.update(last)
    except KeyboardInterrupt:
        if bar:
            bar.close()
        print(f"\ninterrupted; cancelling job {job_id}", file=sys.stderr)
        try:
            client.cancel(job_id)
        except (ApiError, httpx.HTTPError) as exc:
            print(f"cancel failed: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TimeoutError as exc:
        if bar:
            bar.close()
        print(str(exc), file=sys.stderr)
        return EXIT_JOB_FAILED
    finally:
        if bar:
            bar.close()
    assert last is not None
    return _finish(last, args)


class PreviewWatch:
    """Prints the preview's playlist once its first segment exists; with --follow, mirrors the
    segments into a file as they appear (client/preview.py)."""

    def __init__(self, follow: Path | None, job_id: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.printed = False
        self.follower = None
        self.follow = follow
        if follow is not None:
            if follow.exists():
                follow.unlink()  # a new job's file starts empty
            self.follower = PreviewFollower(follow.parent / f".{follow.name}.segments", follow_file=follow)

    def see(self, st: JobStatus) -> None:
        prog = st.progress
        preview = prog.preview if prog is not None else None
        if st.status == "COMPLETED" and isinstance(st.output, dict):
            preview = st.output.get("preview")  # the last segments may arrive with the result
        where = preview_location(preview)
        if where is not None and not self.printed:
            self.printed = True
            print(f"\npreview (HLS, grows while the job renders): {where}", file=self.stream)
        if self.follower is not None and where is not None and self.follower.update(preview):
            print(f"\nfollowing into {self.follow}: {self.follower.fetched} segments, {self.follower.seconds:.1f} s",
                  file=self.stream)


def _finish(last: JobStatus, args: argparse.Namespace) -> int:
    if getattr(args, "json", False):
        print(json.dumps(last.model_dump(exclude_none=True), default=str))
    err = last.error_info
    if err is not None and err.partial_video:
        print(f"partial video (what was made before it stopped): {err.partial_video}", file=sys.stderr)
    if last.status == "CANCELLED" or (err is not None and err.code == "E_CANCELLED"):
        print(f"job {last.id} CANCELLED: stopped before it finished, so there is no video", file=sys.stderr)
        return EXIT_JOB_FAILED
    if last.status != "COMPLETED" or err is not None:
        info = err or JobErrorInfo(code=f"E_{last.status}", message=f"job ended {last.status}")
        print(f"job {last.id} {last.status}: {info.describe()}", file=sys.stderr)
        return EXIT_JOB_FAILED
    out = last.output if isinstance(last.output, dict) else {}
    summary = ", ".join(f"{k}={out[k]}" for k in ("duration_s", "width", "height", "seed") if k in out)
    print(f"job {last.id} COMPLETED {summary}".rstrip(), file=sys.stderr)
    if getattr(args, "no_download", False):
        print(out.get("video_url") or out.get("video_path") or "")
        return EXIT_OK
    path = save_result(out, args.output_dir, last.id)
    if path is None:
        where = out.get("video_url") or out.get("video_path")
        print(f"result not reachable from here: {where}", file=sys.stderr)
        print(where or "")
    else:
        print(str(path))
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        job = _job_input(args)
    except (InvalidJobInput, LocalMediaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, PayloadTooLarge) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with make_client(args) as client:
        if args.sync:
            first = client.runsync(job, wait_s=args.sync_wait)
        else:
            first = client.run(job)
        print(f"job {first.id} {first.status}", file=sys.stderr)
        if args.no_wait:
            print(first.id)
            return EXIT_OK
        return _follow(client, first.id, args, first if first.final else None)


def cmd_status(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        st = client.status(args.job_id)
        if not args.wait:
            print(json.dumps(st.model_dump(exclude_none=True), default=str, indent=2))
            if st.final and st.error_info is not None:
                print(st.error_info.describe(), file=sys.stderr)
            return EXIT_OK
        args.json = False
        args.job_timeout = None
        return _follow(client, args.job_id, args, st if st.final else None)


def cmd_cancel(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        st = client.cancel(args.job_id)
        print(f"job {st.id} {st.status}")
        return EXIT_OK


def cmd_estimate(args: argparse.Namespace) -> int:
    from client.estimate import estimate_job, format_estimate, media_duration_s

    secs = args.audio_seconds
    if secs is None and args.audio:
        secs = media_duration_s(args.audio)
    if secs is None:
        print("error: give --audio-seconds or a readable --audio file", file=sys.stderr)
        return EXIT_USAGE
    if not secs > 0:
        print(f"error: --audio-seconds must be more than 0, got {secs:g}", file=sys.stderr)
        return EXIT_USAGE
    try:
        est = estimate_job(audio_s=secs, tier=args.tier, preset=args.preset, size=args.size, mode=args.mode,
                           speakers=args.speakers, guidance_every=args.guidance_every)
    except ValueError as exc:  # an unknown tier, guidance_every < 1
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_estimate(est))
    return EXIT_OK


CLIENT_VENV = Path(__file__).resolve().parents[1] / ".venv-client"


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        # gradio cannot share an environment with runpod: the README's set-up (scripts/test.sh, or
        # INFINITETALK_WITH_CLIENT=1 scripts/bootstrap.sh) makes .venv-client beside .venv; run the UI there.
        python = CLIENT_VENV / "bin" / "python"
        if python.is_file() and Path(sys.prefix).resolve() != CLIENT_VENV.resolve():
            argv = [str(python), "-m", "client", "ui", "--host", args.host, "--port", str(args.port)]
            if args.base_url:
                argv += ["--base-url", args.base_url]
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(str(python), argv)
        print("error: the UI needs gradio, which lives in its own environment (.venv-client); make it with "
              "INFINITETALK_WITH_CLIENT=1 scripts/bootstrap.sh, then run infinitetalk ui again", file=sys.stderr)
        return EXIT_USAGE
    from client.ui import launch

    launch(args.host, args.port, base_url=args.base_url)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command in ("submit", "status", "cancel") and not (args.endpoint_id or args.base_url):
        parser.error("give --endpoint-id (Runpod) or --base-url (local endpoint)")
    try:
        return int(args.func(args) or 0)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_API
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the endpoint: {exc!r}", file=sys.stderr)
        return EXIT_API
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
