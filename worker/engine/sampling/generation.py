"""InfiniteTalk's chunked generation loop (clip and streaming modes) as a frame stream.

The loop follows the reference `generate_infinitetalk` numerically (float32): per chunk it
encodes the condition frame into `y`, denoises fresh noise with text/audio guidance while
pinning the first latent frames to the clean motion latents, decodes, colour-corrects and
hands over the chunk's new frames at once. Only the last `motion_frame` corrected frames of
a chunk are kept for the next one, so memory does not grow with the video length.

Random numbers come from one CPU generator seeded once; the reference also draws
motion-frame noise in every chunk after the first that is overwritten before use, and we
draw (and discard) it too so that every later noise tensor stays identical.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from worker.engine.sampling.audio_windows import ChunkSpec, chunk_audio, latent_frames, plan_chunks
from worker.engine.sampling.buckets import pick_bucket, resize_and_center_crop_masks, resize_to_target
from worker.engine.sampling.color import LabReference, lab_reference, match_colors
from worker.engine.errors import EngineOOMError, GenerationCancelled
from worker.engine.sampling.guidance import COND, DROP_AUDIO, DROP_TEXT, UNCOND, Guider, euler_step
from worker.engine.sampling.schedule import NUM_TRAIN_TIMESTEPS, timesteps
from worker.engine.settings import GenerationSettings
from worker.engine.sampling.teacache import TeaCache

LATENT_CHANNELS = 16
VAE_STRIDE = (4, 8, 8)
PATCH_HW = (2, 2)
MAX_SEED = 99_999_999

Frame = Union[Image.Image, np.ndarray]
ClipEncode = Callable[[torch.Tensor], torch.Tensor]
Trace = Callable[[str, torch.Tensor], None]


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class GenerationInputs:
    """Everything already encoded except the condition frames.

    `cond`: one image (image-to-video) or the source video frames for dubbing, as a sequence or a
    one-pass iterator of PIL images / uint8 HxWx3 arrays; each chunk is conditioned on the source frame
    at its audio start (the last frame once the source runs out). `audio`: per-speaker wav2vec2
    embeddings [N, 12, 768] at 25 fps. `context` / `context_null`: T5 embeddings [L, text_dim] of the
    prompt and the negative prompt. `ref_target_masks`: [3, lat_h, lat_w] masks (speaker 1, speaker 2,
    background); None builds them with `speaker_masks` from `bboxes` (two speakers) or as all ones.
    """

    cond: Frame | Sequence[Frame] | Iterable[Frame]
    audio: tuple[torch.Tensor, ...]
    context: torch.Tensor
    context_null: torch.Tensor
    ref_target_masks: torch.Tensor | None = None
    bboxes: tuple[tuple[float, float, float, float], ...] | None = None
    face_scale: float = 0.05


@dataclass(frozen=True)
class StepInfo:
    chunk: int
    n_chunks: int
    step: int
    steps: int
    timestep: float


@dataclass(frozen=True)
class ChunkResult:
    """New frames of one chunk, ready for the video encoder.

    `frames`: float32 [3, n, H, W] in [-1, 1], on the engine's device (the loop never copies the float
    frames to the host; drop the chunk once consumed); `frames_uint8`: [n, H, W, 3] on the host, as the reference
    writes them ((x + 1) / 2 * 255, clipped, truncated). `first_frame` is the index of frames[0] in
    the whole video, `total_frames` the planned length of the whole video.
    """

    index: int
    n_chunks: int
    first_frame: int
    total_frames: int
    is_last: bool
    seed: int
    frames: torch.Tensor
    frames_uint8: np.ndarray = field(repr=False)
    state: ResumeState | None = field(default=None, repr=False)  # where a resumed run starts next (None when last)


@dataclass(frozen=True)
class ResumeState:
    """What a later run needs to continue after chunk `next_chunk - 1` with the same frames.

    The loop's only carried state is the generator's position, the last `motion_frame`
    colour-corrected frames and the frame count; everything else (colour reference, condition
    frames, audio windows) is recomputed from the same inputs. `plan` fingerprints the chunk
    plan so a state is never applied to a different request. `to_bytes` keeps torch out of the
    worker, which stores the bytes as an opaque blob.
    """

    next_chunk: int
    emitted: int
    seed: int
    rng_state: torch.Tensor
    rng_calls: int
    motion_pixels: torch.Tensor
    plan: tuple[int, int, int, int]  # (n_chunks, total_frames, frame_num, motion_frame)

    def to_bytes(self) -> bytes:
        import io

        buf = io.BytesIO()
        torch.save(
            {
                "version": 1,
                "next_chunk": self.next_chunk,
                "emitted": self.emitted,
                "seed": self.seed,
                "rng_state": self.rng_state.clone(),
                "rng_calls": self.rng_calls,
                "motion_pixels": self.motion_pixels.detach().cpu().contiguous(),
                "plan": list(self.plan),
            },
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ResumeState:
        import io

        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(d, dict) or d.get("version") != 1:
            raise ValueError("unknown resume state format")
        return cls(
            next_chunk=int(d["next_chunk"]),
            emitted=int(d["emitted"]),
            seed=int(d["seed"]),
            rng_state=d["rng_state"],
            rng_calls=int(d["rng_calls"]),
            motion_pixels=d["motion_pixels"],
            plan=tuple(int(x) for x in d["plan"]),  # type: ignore[arg-type]
        )


# ----------------------------------------------------------------------------- helpers


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, n, H, W] in [-1, 1] -> uint8 [n, H, W, 3] with the reference's rounding (truncation).

    Converted where the frames are (the same float32 operations as the reference's numpy ones, so the
    bytes are identical); only the uint8 array, a quarter of the float32 bytes, crosses to the host.
    """
    x = ((video.detach().float() + 1) / 2 * 255).clamp_(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def speaker_masks(
    source_hw: tuple[int, int],
    target_hw: tuple[int, int],
    n_speakers: int,
    bboxes: Sequence[Sequence[float]] | None = None,
    face_scale: float = 0.05,
) -> torch.Tensor:
    """[3, th/8, tw/8] float masks (speaker 1, speaker 2, background) at latent resolution.

    Built at source resolution, resized/cropped like the condition image, then reduced to the latent
    grid by nearest interpolation. One speaker: all ones. Two speakers: `bboxes` as given to the
    reference, (a, b, c, d) selecting rows a:c and columns b:d of the source frame (the reference's
    x_min/x_max index rows); without bboxes a left/right split with `face_scale` margins.
    """
    h, w = source_hw
    th, tw = target_hw
    if n_speakers == 1:
        masks = torch.ones(3, h, w)
    elif n_speakers == 2:
        people = []
        if bboxes is not None:
            if len(bboxes) != 2:
                raise ValueError("two speakers need two bounding boxes")
            for a, b, c, d in bboxes:
                m = torch.zeros(h, w)
                m[int(a):int(c), int(b):int(d)] = 1
                people.append(m)
        else:
            r0, r1 = int(h * face_scale), int(h * (1 - face_scale))
            half = w // 2
            spans = [
                (int(half * face_scale), int(half * (1 - face_scale))),
                (int(half * face_scale + half), int(half * (1 - face_scale) + half)),
            ]
            for c0, c1 in spans:
                m = torch.zeros(h, w)
                m[r0:r1, c0:c1] = 1
                people.append(m)
        background = ((people[0] + people[1]) <= 0).float()
        masks = torch.stack(people + [background])
    else:
        raise ValueError(f"one or two speakers are supported, got {n_speakers}")
    cropped = resize_and_center_crop_masks(masks, (th, tw))
    lat = torch.nn.functional.interpolate(
        cropped[None], size=(th // VAE_STRIDE[1], tw // VAE_STRIDE[2]), mode="nearest"
    )[0]
    return (lat > 0).float()


def _as_pil(frame: Frame) -> Image.Image:
    if isinstance(frame, Image.Image):
        return frame.convert("RGB") if frame.mode != "RGB" else frame
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be PIL images or uint8 HxWx3 arrays, got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)


class _FrameSource:
    """Random-ish access to the condition frames at increasing indices; clamps to the last frame."""

    def __init__(self, cond: Frame | Sequence[Frame] | Iterable[Frame]) -> None:
        self._single: Image.Image | None = None
        self._seq: Sequence[Frame] | None = None
        self._iter: Iterator[Frame] | None = None
        self._pos = -1
        self._last: Image.Image | None = None
        if isinstance(cond, np.ndarray) and cond.ndim == 4:
            cond = list(cond)  # a stacked [n, H, W, 3] clip
        if isinstance(cond, (Image.Image, np.ndarray)):
            self._single = _as_pil(cond)
        elif isinstance(cond, Sequence):
            if len(cond) == 0:
                raise ValueError("no condition frames given")
            self._seq = cond
        else:
            self._iter = iter(cond)

    def get(self, index: int) -> Image.Image:
        if self._single is not None:
            return self._single
        if self._seq is not None:
            return _as_pil(self._seq[min(index, len(self._seq) - 1)])
        if index < self._pos:
            raise ValueError("frames of an iterator source must be requested in increasing order")
        while self._pos < index:
            try:
                nxt = next(self._iter)
            except StopIteration:
                break
            self._last = _as_pil(nxt)
            self._pos += 1
        if self._last is None:
            raise ValueError("no condition frames given")
        return self._last


def _pad_rows(x: torch.Tensor, length: int) -> torch.Tensor:
    if x.shape[0] == length:
        return x
    return torch.cat([x, x.new_zeros(length - x.shape[0], *x.shape[1:])], dim=0)


def _condition_mask(t_lat: int, lat_h: int, lat_w: int) -> torch.Tensor:
    """4 mask channels marking latent frame 0 (the condition frame) as known."""
    msk = torch.zeros(1, 4, t_lat, lat_h, lat_w)
    msk[:, :, 0] = 1
    return msk


# ----------------------------------------------------------------------------- loop


class _PassRunner:
    """Runs the guidance passes of one step, batching passes that share a speaker count."""

    def __init__(
        self,
        dit: torch.nn.Module,
        branches: tuple[str, ...],
        context: torch.Tensor,
        context_null: torch.Tensor,
        batch: bool,
        teacache: TeaCache | None = None,
    ) -> None:
        self.dit = dit
        self.branches = branches
        self.batch = batch
        self.teacache = teacache
        self.device = next(dit.parameters()).device
        self.ctx = {
            COND: context,
            DROP_AUDIO: context,
            DROP_TEXT: context_null,
            UNCOND: context_null,
        }

    def __call__(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        clip_fea: torch.Tensor,
        y: torch.Tensor,
        audio: torch.Tensor,
        masks: torch.Tensor,
        branches: tuple[str, ...] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Predictions of `branches` (default: all of this runner's) for one step."""
        zero_audio = torch.zeros_like(audio[:1])  # the reference's null audio: one silent speaker
        audio_of = {COND: audio, DROP_TEXT: audio, UNCOND: zero_audio, DROP_AUDIO: zero_audio}
        groups: list[list[str]] = []
        for b in self.branches if branches is None else branches:
            if self.batch and groups and audio_of[groups[-1][0]].shape == audio_of[b].shape:
                groups[-1].append(b)
            else:
                groups.append([b])
        out: dict[str, torch.Tensor] = {}
        for group in groups:
            n = len(group)
            length = max(self.ctx[b].shape[0] for b in group)
            ctx = torch.stack([_pad_rows(self.ctx[b], length) for b in group]).to(self.device)
            aud = torch.stack([audio_of[b] for b in group]).to(self.device)
            res = self.dit(
                latent[None].expand(n, *latent.shape),
                t.to(self.device),
                ctx,
                clip_fea.expand(n, *clip_fea.shape[1:]),
                y.expand(n, *y.shape[1:]),
                aud,
                masks,
                **({} if self.teacache is None else {"teacache": (self.teacache, group)}),
            )
            for k, b in enumerate(group):
                out[b] = res[k]
        return out


def generate(
    dit: torch.nn.Module,
    vae: Any,
    clip_encode: ClipEncode,
    inputs: GenerationInputs,
    settings: GenerationSettings,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    trace: Trace | None = None,
    resume: ResumeState | None = None,
) -> Iterator[ChunkResult]:
    """Yield each chunk's new frames as soon as it is decoded and colour-corrected.

    `dit(latent, t, context, clip_fea, y, audio, ref_target_masks)` is the batch-first InfiniteTalk DiT;
    `vae` offers `encode([B,3,F,H,W]) -> [B,16,T,h,w]` and `decode([B,16,T,h,w]) -> [B,3,F,H,W]` clamped;
    `clip_encode([1,3,1,H,W] in [-1,1]) -> [1,257,1280]`. `should_cancel()` is polled before every step
    (raises GenerationCancelled); `on_step` is told after every step. `trace(name, tensor)` receives
    intermediates under the golden data's names, for parity tests and debugging; the tensors may be
    live buffers of the loop, so clone what you keep. `resume` (a chunk's `state` from an earlier run
    of the same request) starts at the chunk after it and yields the frames the full run would.
    """
    try:
        yield from _generate(dit, vae, clip_encode, inputs, settings, on_step, should_cancel, trace, resume)
    except torch.OutOfMemoryError as exc:
        raise EngineOOMError(str(exc)) from exc


def _generate(dit, vae, clip_encode, inputs, settings, on_step, should_cancel, trace, resume=None) -> Iterator[ChunkResult]:
    s = settings
    if s.mode not in ("clip", "streaming"):
        raise ValueError(f"mode must be 'clip' or 'streaming', got {s.mode!r}")
    if not inputs.audio:
        raise ValueError("at least one speaker's audio embedding is needed")
    if len(inputs.audio) > 2:
        raise ValueError(f"one or two speakers are supported, got {len(inputs.audio)}")
    emit = trace or (lambda name, tensor: None)

    plan = plan_chunks([a.shape[0] for a in inputs.audio], s.frame_num, s.motion_frame, s.max_frames, s.mode)
    frames = _FrameSource(inputs.cond)
    first = frames.get(0)
    src_h, src_w = first.height, first.width
    th, tw = pick_bucket(src_h, src_w, s.bucket_table())
    lat_h, lat_w = th // VAE_STRIDE[1], tw // VAE_STRIDE[2]
    t_lat = latent_frames(s.frame_num)

    if inputs.ref_target_masks is not None:
        masks = inputs.ref_target_masks.float()
    else:
        masks = speaker_masks((src_h, src_w), (th, tw), len(inputs.audio), inputs.bboxes, inputs.face_scale)

    seed = s.seed if s.seed is not None and s.seed >= 0 else random.randint(0, MAX_SEED)
    plan_key = (len(plan.chunks), plan.total_frames, s.frame_num, s.motion_frame)
    if resume is not None:
        if tuple(resume.plan) != plan_key or not 0 < resume.next_chunk < len(plan.chunks):
            raise ValueError(f"resume state {resume.plan} @ {resume.next_chunk} does not fit this request {plan_key}")
        seed = resume.seed
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rng_calls = 0
    if resume is not None:
        gen.set_state(resume.rng_state)
        rng_calls = resume.rng_calls

    def draw(shape: tuple[int, ...], kind: str) -> torch.Tensor:
        nonlocal rng_calls
        x = torch.randn(shape, generator=gen, dtype=torch.float32)
        emit(f"rng{rng_calls}.{kind}", x)
        rng_calls += 1
        return x

    vae_calls = 0

    def encode(video: torch.Tensor, cached: torch.Tensor | None = None) -> torch.Tensor:
        """VAE encode, or a cached result of the same input (still traced under its call index, so a trace
        lines up with the reference's call order and a golden check covers the cache too)."""
        nonlocal vae_calls
        out = vae.encode(video) if cached is None else cached
        emit(f"vae_encode{vae_calls}.in", video[0])
        emit(f"vae_encode{vae_calls}.out", out[0])
        vae_calls += 1
        return out

    device = next(dit.parameters()).device
    ts = timesteps(s.sample_steps, s.sample_shift)
    guider = Guider(s.guidance)
    cache = TeaCache.for_model(s.teacache_model, s.teacache_thresh) if s.use_teacache else None
    runner = _PassRunner(dit, s.guidance.branches, inputs.context, inputs.context_null, s.batch_passes, cache)
    color_ref: LabReference | None = None
    color_ref_image: torch.Tensor | None = None
    motion_pixels: torch.Tensor | None = None  # last motion_frame corrected frames of the previous chunk
    cond_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (frame, CLIP features, y latent)
    emitted = 0
    masks_dev = masks.to(device)
    if resume is not None:
        motion_pixels, emitted = resume.motion_pixels.float(), resume.emitted
        if s.color_correction_strength > 0.0:  # the reference is chunk 0's condition frame, recomputed
            ref_cond = resize_to_target(frames.get(plan.chunks[0].audio_start), (th, tw))
            color_ref, color_ref_image = lab_reference(ref_cond.to(device)), ref_cond

    with torch.no_grad():
        for spec in plan.chunks:
            if spec.emit == 0 and spec.index > 0:
                break  # everything from here on would be cut by the final truncation
            i = spec.index
            if resume is not None and i < resume.next_chunk:
                continue
            cond = resize_to_target(frames.get(spec.audio_start), (th, tw))  # [1, 3, 1, th, tw]
            if i == 0 and s.color_correction_strength > 0.0:
                color_ref, color_ref_image = lab_reference(cond.to(device)), cond
            emit(f"chunk{i}.clip_input", cond)
            # CLIP features and the condition latent depend on the condition frame alone: an image input (the
            # same frame every chunk) computes them once a job, not once a chunk.
            same_cond = cond_cache is not None and torch.equal(cond_cache[0], cond)
            if same_cond:
                clip_fea = cond_cache[1]
            else:
                clip_fea = clip_encode(cond).to(device=device, dtype=torch.float32)

            audio = chunk_audio(inputs.audio, spec, s.frame_num)  # [speakers, F, 5, 12, 768]
            emit(f"chunk{i}.audio_windows", audio)

            noise = draw((LATENT_CHANNELS, t_lat, lat_h, lat_w), "randn")

            cond_dev = cond.to(device)
            if not same_cond or trace is not None:
                padded = torch.cat([cond_dev, cond_dev.new_zeros(1, 3, s.frame_num - 1, th, tw)], dim=2)
            if same_cond:
                y_lat = encode(padded if trace is not None else cond_dev, cached=cond_cache[2])
            else:
                y_lat = encode(padded)
                cond_cache = (cond, clip_fea, y_lat)
            if i == 0:
                motion = encode(cond_dev)[0].float()
            else:
                motion = encode(motion_pixels)[0].float()
            # built where the latent lives: no host round trip of the [1, 20, T, h, w] condition each chunk
            y = torch.cat([_condition_mask(t_lat, lat_h, lat_w).to(y_lat.device), y_lat.float()], dim=1).to(device)
            emit(f"chunk{i}.y", y)
            emit(f"chunk{i}.ref_target_masks", masks)
            motion = motion.to(device)
            n_motion = spec.motion_latent_frames

            latent = noise.to(device)
            if i > 0:
                draw(tuple(motion.shape), "randn_like")  # overwritten by the clean motion latents
            guider.reset()
            if cache is not None:
                cache.reset()
            for step in range(s.sample_steps):
                if cache is not None:
                    cache.begin_step(step)
                if should_cancel is not None and should_cancel():
                    raise GenerationCancelled(f"cancelled before step {step + 1} of chunk {i + 1}")
                latent[:, :n_motion] = motion
                t_now = ts[step : step + 1]
                emit(f"chunk{i}.step{step}.t", t_now)
                full = guider.config.full_step(step)
                preds = runner(latent, t_now, clip_fea, y, audio, masks_dev, None if full else (COND,))
                for b in preds:
                    emit(f"chunk{i}.step{step}.{b}.x", latent)
                    emit(f"chunk{i}.step{step}.{b}.out", preds[b][None])
                pred = guider.combine(preds) if full else guider.reuse(preds[COND])
                latent = euler_step(latent, pred, t_now.to(device), ts[step + 1 : step + 2].to(device),
                                    NUM_TRAIN_TIMESTEPS)
                if i > 0:
                    draw(tuple(motion.shape), "randn_like")
                latent[:, :n_motion] = motion
                if on_step is not None:
                    on_step(StepInfo(i, len(plan.chunks), step, s.sample_steps, float(t_now)))
            emit(f"chunk{i}.final_latent", latent)

            video = vae.decode(latent[None]).float()  # [1, 3, F, H, W], stays on the device
            emit(f"chunk{i}.decoded", video[0])
            if color_ref is not None:
                emit(f"chunk{i}.color_in", video)
                emit(f"chunk{i}.color_ref", color_ref_image)
                video = match_colors(video, color_ref, s.color_correction_strength)
                emit(f"chunk{i}.color_out", video)
            if not spec.is_last:
                motion_pixels = video[:, :, -s.motion_frame :].clone()

            new = video[0, :, spec.skip : spec.skip + spec.emit].contiguous()
            last = spec.is_last or plan.chunks[i + 1].emit == 0
            state = None
            if not last:
                state = ResumeState(
                    next_chunk=i + 1,
                    emitted=emitted + spec.emit,
                    seed=seed,
                    rng_state=gen.get_state(),
                    rng_calls=rng_calls,
                    motion_pixels=motion_pixels,
                    plan=plan_key,
                )
            yield ChunkResult(
                index=i,
                n_chunks=len(plan.chunks),
                first_frame=emitted,
                total_frames=plan.total_frames,
                is_last=last,
                seed=seed,
                frames=new,
                frames_uint8=to_uint8_frames(new),
                state=state,
            )
            emitted += spec.emit
            del video, latent
