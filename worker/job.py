"""One job from payload to stored MP4 in ten numbered stages (`_JobRun.run`, one method each): validate →
fetch → audio → load → encode → sample → decode → mux → store → respond, with a progress dict at every stage
and one error code per failure.

The engine is reached through `EngineHolder`, which imports torch only when the load stage
runs, so validation and download failures never pay for it. Every file the job writes lives in
a per-job folder that is removed whatever happens; the MP4 is renamed into place only once whole.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.background import SerialBackground
from configuration import AppConfig
from worker.resolve import ResolvedJobConfig, apply_job_overrides, build_request
from worker.engine import (
    AudioDecodeError,
    EngineError,
    EngineOOMError,
    GenerationCancelled,
    LoraFitError,
    RankFailedError,
    TtsInputError,
    WeightLoadError,
    fit_peak,
)
from contract.choices import AUDIO_SAMPLE_RATE as SAMPLE_RATE
from contract.choices import VIDEO_FPS as FPS
from contract.errors import ErrorCode, JobError
from worker.inputs.fetch import fetch_media
from worker.inputs.media_guard import check_audio, check_image, check_video
from worker.logging_setup import bind_job, get_logger
from worker.loras import JobLora, LoraCache, fetch_lora
from worker.media.audio import cut_to_video, synthesized_tracks, uploaded_tracks
from worker.media.masks import mask_for_condition, speaker_regions_for_condition
from worker.media.trim import trim_trailing_silence
from worker.media.media_frames import iter_video_frames, open_image_rgb
from worker.media.mux import Mp4Writer, probe_mp4
from worker.progress import ProgressReporter, Stage
from contract.job import DEFAULT_NEGATIVE_PROMPT, JobInput, JobOutput, parse_job_input
from worker.storage import make_store
from worker.wiring import (
    checkpoint_layout, engine_options, fetch_policy, lora_cache_dir, media_limits, storage_settings,
)


log = get_logger("worker.job")
_LOGGED_CONFIG = ("sampler", "size", "mode", "sample_steps", "frame_num", "max_duration_s", "seed", "output_target")


class EngineHolder:
    """Loads the engine once per worker process and keeps it warm; thread-safe."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self._engine: Any = None
        self._lock = threading.Lock()
        self.load_seconds: float | None = None
        self.read_ahead: Any = None  # the start-up Prefetcher (worker.engine.formats.prefetch.warm_start)
        self._tts: Any = None
        self._tts_lock = threading.Lock()
        self._isolator: Any = None
        self._isolator_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def get(self) -> Any:
        with self._lock:
            if self._engine is None:
                start = time.perf_counter()
                layout = checkpoint_layout(self.cfg)
                if self.cfg.model.kind == "tiny":
                    from testkit.tiny import ensure_tiny_checkpoint

                    ensure_tiny_checkpoint(layout.ckpt_dir.parent)
                from worker.engine import EngineOptions, warm_start

                options = EngineOptions(**engine_options(self.cfg))
                # The disk streams the weights from now on, while torch imports and CUDA starts (torch-free).
                self.read_ahead = warm_start(layout.read_order(options.quant))
                try:
                    from worker.engine import Engine  # the facade loads the torch side here

                    self._engine = self._load(Engine, layout, options)
                finally:
                    self.read_ahead.stop(timeout=0)
                self.load_seconds = round(time.perf_counter() - start, 3)
            return self._engine

    def _load(self, engine_cls: Any, layout: Any, options: Any) -> Any:
        par = self.cfg.gpu.parallel
        if par.ranks == 1:
            return engine_cls.load(layout, options)
        from worker.engine import ParallelEngine, RankGroup  # one process per GPU; this one is rank 0

        group = RankGroup(par.ranks, par.method, layout, options, timeout_s=par.timeout_s)
        group.start(wait=False)  # the followers load beside this one
        try:
            engine = engine_cls.load(layout, options)
        except BaseException:
            group.stop()
            raise
        return ParallelEngine.attach(engine, group)

    def tts(self) -> Any:
        """The Kokoro voice model (worker.engine.models.tts.KokoroTTS), loaded on the first tts job and kept."""
        with self._tts_lock:
            if self._tts is None:
                from worker.engine import KokoroTTS

                folder = self.cfg.model.tts_dir
                if not folder:
                    raise JobError(
                        ErrorCode.E_INPUT_VALIDATION,
                        "text-to-speech is not configured on this worker (model.tts_dir is unset)",
                        hint="send recorded speech in `audio`, or set KOKORO_DIR to a Kokoro-82M folder",
                    )
                if self.cfg.model.kind == "tiny":
                    from testkit.tiny import ensure_tiny_checkpoint, ensure_tiny_kokoro

                    ensure_tiny_checkpoint(checkpoint_layout(self.cfg).ckpt_dir.parent)
                    ensure_tiny_kokoro(Path(folder).parent)
                self._tts = KokoroTTS.from_folder(folder, device=self.cfg.gpu.device)
            return self._tts

    @property
    def isolation_loaded(self) -> bool:
        return self._isolator is not None

    def isolator(self) -> Any:
        """The voice isolation model (worker.engine.models.separation.VoiceIsolator), loaded on the first
        audio_isolation job and kept; a missing or wrong file is a WeightLoadError (E_PIPELINE_LOAD)."""
        with self._isolator_lock:
            if self._isolator is None:
                from worker.engine import VoiceIsolator

                path = self.cfg.model.isolation_path
                if not path:  # apply_job_overrides refuses such jobs first; this guards other callers
                    raise JobError(ErrorCode.E_INPUT_VALIDATION, "audio_isolation is not available on this worker "
                                   "(model.isolation_path is unset)", hint="leave audio_isolation out")
                variant = "published"
                if self.cfg.model.kind == "tiny":
                    from testkit.tiny import ensure_tiny_isolation

                    ensure_tiny_isolation(Path(path).parent.parent)
                    variant = "tiny"
                self._isolator = VoiceIsolator.from_file(path, device=self.cfg.gpu.device, variant=variant)
            return self._isolator


@dataclass
class JobContext:
    """What a worker keeps between jobs."""

    cfg: AppConfig
    engine: EngineHolder
    extra_roots: tuple[Path, ...] = ()

    @classmethod
    def create(cls, cfg: AppConfig, extra_roots: Iterable[Path] = ()) -> JobContext:
        return cls(cfg=cfg, engine=EngineHolder(cfg), extra_roots=tuple(Path(p) for p in extra_roots))


@dataclass
class _Timer:
    timings: dict[str, float] = field(default_factory=dict)
    _stage: str | None = None
    _start: float = 0.0

    def enter(self, stage: str) -> None:
        now = time.perf_counter()
        if self._stage is not None:
            self.timings[self._stage] = round(self.timings.get(self._stage, 0.0) + now - self._start, 3)
        self._stage, self._start = stage, now

    def close(self) -> dict[str, float]:
        self.enter("_end")
        self.timings.pop("_end", None)
        return self.timings


def _engine_error(exc: BaseException) -> JobError:
    """Maps engine failures to user-facing codes; unrecoverable GPU states ask for a fresh worker."""
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, WeightLoadError):
        return JobError(ErrorCode.E_PIPELINE_LOAD, str(exc), details={"file": exc.file, "key": exc.key})
    if isinstance(exc, LoraFitError):
        field_ = f"loras[{exc.index}]"
        return JobError(ErrorCode.E_INPUT_VALIDATION, str(exc),
                        hint=f"{field_}: send a LoRA made for this model (Wan2.1 I2V 14B / InfiniteTalk; its keys name "
                        "the DiT's modules, e.g. diffusion_model.blocks.0.self_attn.q.lora_down.weight).",
                        details={"field": field_, "key": exc.key})
    if isinstance(exc, TtsInputError):
        return JobError(ErrorCode.E_INPUT_VALIDATION, str(exc), hint=exc.hint or "check tts.text and the voice names")
    if isinstance(exc, AudioDecodeError):
        return JobError(ErrorCode.E_AUDIO_EMBEDDING, str(exc))
    if isinstance(exc, EngineOOMError):
        return JobError(ErrorCode.E_OOM, str(exc), refresh_worker=True)
    if isinstance(exc, RankFailedError):
        return JobError(ErrorCode.E_RANK_FAILED, str(exc), refresh_worker=exc.refresh_worker)
    if isinstance(exc, GenerationCancelled):
        return JobError(ErrorCode.E_CANCELLED, str(exc) or "cancelled")
    if isinstance(exc, EngineError):
        return JobError(ErrorCode.E_PIPELINE_LOAD, str(exc))
    if isinstance(exc, MemoryError):
        return JobError(ErrorCode.E_OOM, "host memory exhausted", refresh_worker=True)
    text = f"{type(exc).__name__}: {exc}"
    cuda_broken = "CUDA error" in text or "cuDNN error" in text or "CUBLAS_STATUS" in text
    # The exception's own words go to details and the log, not to the sentence a person reads.
    return JobError(
        ErrorCode.E_INTERNAL, "the worker hit an unexpected problem and stopped this job",
        details={"error": text[:500]}, refresh_worker=cuda_broken,
    )


class _Deadline:
    def __init__(self, seconds: float, should_cancel: Callable[[], bool] | None) -> None:
        self.end = time.monotonic() + seconds if seconds and seconds > 0 else None
        self.seconds = seconds
        self.should_cancel = should_cancel

    def check(self) -> bool:
        if self.end is not None and time.monotonic() > self.end:
            raise JobError(
                ErrorCode.E_TIMEOUT, f"the job passed the worker's deadline of {self.seconds:g} s",
                details={"job_timeout_s": self.seconds},
            )
        return bool(self.should_cancel and self.should_cancel())


def run_job(
    job_id: str,
    payload: Any,
    ctx: JobContext,
    sink: Callable[[dict[str, Any]], None],
    *,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run one job; returns the output dict or raises JobError (never anything else)."""
    with bind_job(job_id):
        work = Path(tempfile.mkdtemp(prefix=f"job-{_safe_id(job_id)}-", dir=_work_root(ctx.cfg)))
        try:
            return _run(job_id, payload, ctx, sink, work, should_cancel)
        except JobError as exc:
            log.warning("job failed", code=str(exc.code), message=exc.message)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure leaves as a JobError
            err = _engine_error(exc)
            log.error("job failed", code=str(err.code), message=err.message, exc_info=err.code is ErrorCode.E_INTERNAL)
            raise err from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _safe_id(job_id: str) -> str:
    return "".join(c for c in str(job_id) if c.isalnum() or c in "-_")[:48] or "job"


def _work_root(cfg: AppConfig) -> Path:
    root = Path(cfg.server.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _run(job_id, payload, ctx: JobContext, sink, work: Path, should_cancel) -> dict[str, Any]:
    return _JobRun(job_id, payload, ctx, sink, work, should_cancel).run()


class _JobRun:
    """One job's state as it moves through the numbered stages of `run` (one method per stage)."""

    def __init__(self, job_id: str, payload: Any, ctx: JobContext, sink, work: Path, should_cancel) -> None:
        self.job_id, self.payload, self.ctx, self.cfg, self.work = job_id, payload, ctx, ctx.cfg, work
        self.progress = ProgressReporter(sink, min_interval_s=0.5)
        self.timer = _Timer()
        self.deadline = _Deadline(self.cfg.server.job_timeout_s, should_cancel)
        self.frames_written = 0

    def run(self) -> dict[str, Any]:
        self.validate()  # 1. the payload against the contract, then this worker's limits
        self.fetch()  # 2. media into the job's folder, each file checked
        self.audio()  # 3. per-speaker tracks and the soundtrack (uploaded or spoken), cut to the video
        self.load()  # 4. the engine, once per worker process
        self.encode()  # 5. the engine's request; checkpoint, store and preview opened
        # A job stopped after some chunks names the video made so far (worker/preview/session.py).
        try:
            with Mp4Writer(self.out_path, self.soundtrack, fps=FPS, audio_rate=SAMPLE_RATE) as writer, \
                    SerialBackground() as host:  # encoder and checkpoints work on chunk n while the GPU samples n+1
                self.sample(writer, host)  # 6. chunks sampled; 7. each decoded as it comes (stage at the last)
                self.mux(host)  # 8. the MP4 finished
            self.probe = probe_mp4(self.out_path)
            self.store()  # 9. the MP4 to its target
        except BaseException as exc:
            raise self.preview.stopped(_engine_error(exc)) from exc
        return self.respond()  # 10. the result

    def validate(self) -> None:
        self.timer.enter("validate")
        self.progress.stage(Stage.VALIDATE)
        self.job = parse_job_input(self.payload, allow_http=self.cfg.server.allow_http)
        self.resolved = apply_job_overrides(self.cfg, self.job)
        # The whole resolved config goes back in the result; the log line keeps what tells jobs apart.
        log.info("job accepted", job=self.job.log_summary(),
                 config={k: getattr(self.resolved, k) for k in _LOGGED_CONFIG})

    def fetch(self) -> None:
        self.timer.enter("download")
        self.progress.stage(Stage.DOWNLOAD)
        self.media = _download(self.job, self.ctx, self.work, self.progress)
        self.deadline.check()
        self.timer.enter("loras")
        self.loras = _fetch_loras(self.job, self.ctx, self.work, self.progress)
        self.deadline.check()

    def audio(self) -> None:
        self.timer.enter("audio")
        self.progress.stage(Stage.AUDIO, "isolating voice" if self.resolved.audio_isolation else None)
        job, resolved = self.job, self.resolved
        if job.tts is not None:
            tracks, soundtrack, unspoken_s = synthesized_tracks(job, resolved, self.ctx.engine.tts(), self.progress)
            self.tracks, self.soundtrack, cut_s = cut_to_video(tracks, soundtrack, resolved)
            self.dropped_s = cut_s + unspoken_s
        else:
            isolator = self.ctx.engine.isolator() if resolved.audio_isolation else None  # "isolating voice"
            self.tracks, self.soundtrack, self.dropped_s = uploaded_tracks(resolved, self.media, isolator, self.progress)
        if self.dropped_s > 0:
            log.info("audio cut to the video's length", mode=resolved.mode, dropped_s=round(self.dropped_s, 3))
        self.trimmed_s = 0.0
        if resolved.trim_trailing_silence:  # after the cut: the video ends when the speech ends (media/trim.py)
            self.tracks, self.soundtrack, self.trimmed_s = trim_trailing_silence(
                self.tracks, self.soundtrack, resolved.silence_threshold_db, resolved.silence_min_s)
            self.progress.update(1.0, f"trimmed {self.trimmed_s:.2f} s of trailing silence")
        # Loudness normalisation can push a spiky track past full scale; the MP4's sound is scaled, never clipped.
        # Only the soundtrack: the embedder's tracks stay as the model takes them.
        self.soundtrack = fit_peak(self.soundtrack)

    def load(self) -> None:
        self.timer.enter("load")
        message = "loading model" if not self.ctx.engine.loaded else "model is warm"
        self.progress.stage(Stage.LOAD, message + (f"; loading LoRAs ({len(self.loras)})" if self.loras else ""))
        self.engine = self.ctx.engine.get()
        self.deadline.check()
        if self.loras:  # each file fits the DiT (keys, shapes) before anything renders; merged at sampling
            self.timer.enter("loras")
            self.engine.check_user_loras([str(lo.path) for lo in self.loras])

    def encode(self) -> None:
        self.timer.enter("encode")
        self.progress.stage(Stage.ENCODE)
        job, media, cfg = self.job, self.media, self.cfg
        cond = open_image_rgb(media["image"]) if "image" in media else iter_video_frames(media["video"], FPS)
        motion_mask = None
        if job.mask is not None:
            cond, motion_mask = mask_for_condition(media.get("mask", job.mask), cond)
        regions = None
        if job.masks is not None and job.speakers == 2:
            specs = {p: media.get(f"masks.{p}", m) for p, m in job.masks.items()}  # a mask image: its fetched file
            cond, regions = speaker_regions_for_condition(specs, cond)
        self.request = build_request(
            cond=cond,
            tracks=self.tracks,
            prompt=job.prompt,
            negative_prompt=job.negative_prompt if job.negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT,
            resolved=self.resolved,
            bboxes=_bboxes(job),
            scenes=[(p.from_s, p.text) for p in job.prompts or ()],
        )
        self.out_path = self.work / "video.mp4"
        if motion_mask is not None:
            self.request = dataclasses.replace(self.request, motion_mask=motion_mask)
        if regions is not None:
            self.request = dataclasses.replace(self.request, speaker_regions=regions)
        if self.loras:
            self.request = dataclasses.replace(self.request, user_loras=tuple((str(lo.path), lo.scale) for lo in self.loras))
        self.ckpt, self.resume = _open_checkpoint(cfg, self.job_id, self.payload, self.resolved)
        if self.resume is not None:
            seed = self.resume.seed  # the interrupted run's seed, even if drawn
            self.resolved = dataclasses.replace(self.resolved, seed=seed)
            self.request = dataclasses.replace(self.request, settings=dataclasses.replace(self.request.settings, seed=seed))
            self.progress.stage(Stage.SAMPLING, f"resuming after chunk {self.resume.chunks} ({self.resume.frames} frames)")
        resolved = self.resolved
        self.store_ = make_store(
            storage_settings(
                cfg, resolved.output_target, key_prefix=resolved.key_prefix, presign_expiry_s=resolved.presign_expiry_s
            )
        )
        prefix = resolved.key_prefix.strip("/")
        self.key = f"{prefix + '/' if prefix else ''}{_safe_id(self.job_id)}.mp4"
        self.preview = _open_preview(self.job_id, job, resolved, self.ctx, self.store_, self.key, self.soundtrack,
                                     self.work, self.ckpt, self.resume, self.progress)

    def sample(self, writer: Mp4Writer, host: SerialBackground) -> None:
        self.timer.enter("sampling")
        preview, ckpt, resume = self.preview, self.ckpt, self.resume

        def keep(chunk) -> None:  # on the background thread, in chunk order
            preview.add_chunk(chunk.frames_uint8, last=chunk.is_last)  # first: the watcher's latency
            writer.write_frames(chunk.frames_uint8)
            if ckpt is not None and chunk.state is not None:
                ckpt.save(chunk.index, chunk.frames_uint8, chunk.state.to_bytes(), seed=chunk.seed)

        def on_step(info) -> None:
            self.progress.sampling(info.chunk + 1, info.n_chunks, info.step + 1, info.steps)

        if resume is not None:
            for i, done in enumerate(ckpt.frames()):
                host.submit(preview.add_resumed, i, done)
                host.submit(writer.write_frames, done)
                self.frames_written += int(done.shape[0])
        chunks = self.engine.generate(
            self.request, on_step=on_step, should_cancel=self.deadline.check,
            **({"resume": resume.state} if resume else {}),
        )
        try:
            for chunk in chunks:
                host.submit(keep, chunk)
                self.frames_written += int(chunk.frames_uint8.shape[0])
                if chunk.is_last:
                    self.timer.enter("decode")
                    self.progress.stage(Stage.DECODE, f"decoded {self.frames_written} frames")
        finally:
            chunks.close()  # now, not at garbage collection: the job's own LoRAs come off the DiT here

    def mux(self, host: SerialBackground) -> None:
        self.timer.enter("mux")
        self.progress.stage(Stage.MUX)
        host.drain()

    def store(self) -> None:
        self.timer.enter("upload")
        self.progress.stage(Stage.UPLOAD)
        self.stored = self.store_.put(self.out_path, self.key)

    def respond(self) -> dict[str, Any]:
        timings = self.timer.close()
        stored, probe, resolved = self.stored, self.probe, self.resolved
        config = resolved.to_dict()
        if self.loras:  # what was merged: the content hash says which file, cached whether it was downloaded
            stats = self.engine.user_lora_stats
            timings.update(lora_merge=stats.merge_s, lora_unmerge=stats.unmerge_s)
            config["loras"] = [{"sha256": lo.sha256, "scale": lo.scale, "bytes": lo.size, "cached": lo.cached}
                               for lo in self.loras]
        output = JobOutput(
            video_url=stored.url,
            video_path=stored.path,
            video_base64=stored.base64,
            storage=stored.location,
            bucket=self.cfg.storage.s3.bucket if stored.location == "s3" else None,
            key=stored.key,
            duration_s=round(probe.duration_s, 3),
            num_frames=probe.num_frames,
            fps=probe.fps,
            width=probe.width,
            height=probe.height,
            seed=resolved.seed,
            truncated=self.dropped_s > 0,
            truncated_s=round(self.dropped_s, 3),
            trimmed_s=round(self.trimmed_s, 3),
            config=config,
            timings_s=timings,
        )
        result = output.model_dump(exclude_none=True)
        self.preview.completed(result)
        result.update(self.preview.result_fields())
        if self.ckpt is not None:
            self.ckpt.clear()
        self.progress.done()
        log.info("job done", duration_s=output.duration_s, frames=output.num_frames, timings=timings)
        return result


def _open_preview(job_id, job, resolved, ctx: JobContext, store, key, soundtrack, work: Path, ckpt, resume, progress):
    """The job's preview (HLS segments while it renders; worker/preview/), kept beside the chunk
    checkpoint when there is one so that a retry reuses the segments of the chunks it resumes after."""
    from worker.preview.session import open_preview

    return open_preview(
        job_id=job_id, job=job, resolved=resolved, store=store, key=key, soundtrack=soundtrack, fps=FPS,
        audio_rate=SAMPLE_RATE, folder=(ckpt.dir / "preview") if ckpt is not None else work / "preview",
        reuse=resume.chunks if resume is not None else 0, progress=progress, net=fetch_policy(ctx.cfg).net,
    )


def _open_checkpoint(cfg: AppConfig, job_id: str, payload: Any, resolved: ResolvedJobConfig):
    """Chunk checkpoints for multi-chunk jobs (see worker/checkpoint.py); (None, None) when off."""
    if not cfg.server.checkpoint_dir or resolved.mode != "streaming":
        return None, None
    from worker.checkpoint import open_checkpoint

    ckpt = open_checkpoint(cfg.server.checkpoint_dir, job_id, payload)
    resume = ckpt.load() if ckpt is not None else None
    if resume is not None:
        log.info("resuming from checkpoint", chunks=resume.chunks, frames=resume.frames)
    return ckpt, resume


def _download(job: JobInput, ctx: JobContext, work: Path, progress: ProgressReporter) -> dict[str, Path]:
    policy = fetch_policy(ctx.cfg, ctx.extra_roots)
    limits = media_limits(ctx.cfg)
    refs = job.media_refs()
    out: dict[str, Path] = {}
    for i, (name, ref) in enumerate(refs.items()):
        kind = "audio" if name.startswith("audio") else "image" if name.startswith("mask") else name
        try:
            fetched = fetch_media(ref, work / "inputs", policy, kind)  # type: ignore[arg-type]
            if kind == "image":
                check_image(fetched.path, limits)
            elif kind == "video":
                check_video(fetched.path, limits)
            else:
                try:
                    check_audio(fetched.path, limits)
                except JobError as exc:
                    if (exc.details or {}).get("reason") != "corrupt":
                        raise
                    raise JobError(ErrorCode.E_AUDIO_EMBEDDING, exc.message, details=exc.details) from exc
        except JobError as exc:
            raise _naming_field(exc, name) from exc
        out[name] = fetched.path
        progress.update((i + 1) / len(refs), f"fetched {name}")
    return out


def _fetch_loras(job: JobInput, ctx: JobContext, work: Path, progress: ProgressReporter) -> tuple[JobLora, ...]:
    """The job's own LoRAs (worker/loras.py) as cached files, each error naming its `loras[i]`."""
    if not job.loras:
        return ()
    cfg = ctx.cfg
    cache = LoraCache(lora_cache_dir(cfg), cfg.server.lora_cache_max_bytes, cfg.server.lora_ref_ttl_s)
    policy = fetch_policy(cfg, ctx.extra_roots)
    out = []
    for i, spec in enumerate(job.loras):
        name = f"loras[{i}]"
        try:
            out.append(fetch_lora(i, spec, cache, policy, cfg.model.lora_dir, work))
        except JobError as exc:
            raise _naming_field(exc, name) from exc
        progress.update((i + 1) / len(job.loras), f"fetched {name}" + (" (cached)" if out[-1].cached else ""))
    return tuple(out)


_ARTICLE = re.compile(r"\ba (?=[aeiou])", re.I)


def _naming_field(exc: JobError, name: str) -> JobError:
    """The same error with the job field it is about named in front (the fetch layer knows only the
    media kind, so "image" vs "video", "audio.person1" vs "audio.person2" is added here)."""
    message = exc.message if exc.message.startswith(f"{name}:") else f"{name}: {exc.message}"
    hint = _ARTICLE.sub("an ", exc.hint or "")
    if name not in hint:
        hint = f"{name}: {hint}" if hint else f"Check {name}."
    details = dict(exc.details) if isinstance(exc.details, dict) else ({} if exc.details is None else {"details": exc.details})
    return JobError(exc.code, message, hint, {**details, "field": name}, refresh_worker=exc.refresh_worker)


def _bboxes(job: JobInput) -> tuple[tuple[float, float, float, float], ...] | None:
    """[x0, y0, x1, y1] in source pixels → the engine's (row0, col0, row1, col1) per speaker."""
    if not job.bbox:
        return None
    people = [p for p in ("person1", "person2") if p in job.bbox]
    if len(people) < job.speakers:
        return None
    return tuple((b[1], b[0], b[3], b[2]) for b in (job.bbox[p] for p in people))
