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
from dataclasses import dataclass, field, replace
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from worker.engine.sampling.audio_windows import ChunkSpec, chunk_audio, latent_frames, plan_chunks
from worker.engine.sampling.buckets import pick_bucket, resize_and_center_crop_masks, resize_to_target
from worker.engine.sampling.color import LabReference, lab_reference, match_colors
from worker.engine.errors import EngineOOMError, GenerationCancelled
from worker.engine.sampling.guidance import COND, DROP_AUDIO, DROP_TEXT, UNCOND, Guider, euler_step
from worker.engine.sampling.masks import latent_motion_mask, pin_outside
from worker.engine.sampling.scenes import chunk_context
from worker.engine.sampling.schedule import NUM_TRAIN_TIMESTEPS, timesteps
from worker.engine.settings import GenerationSettings
from worker.engine.sampling.silence import chunk_audio_scale
from worker.engine.sampling.dubbing import noised, start_step
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
    scene_contexts: tuple[tuple[int, torch.Tensor], ...] = ()  # (first frame, context) per scene (scenes.py)
    motion_mask: np.ndarray | None = None  # bool [H, W] at source resolution: where motion is allowed (masks.py)
    speaker_regions: tuple[np.ndarray, ...] | None = None  # bool [H, W] per speaker, source pixels: instead of bboxes
    silent: np.ndarray | None = None  # bool per audio frame: every speaker silent (silence.py); None: no handling


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
    regions: Sequence[np.ndarray] | None = None,
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
        if regions is not None:  # per-speaker masks, already rasterized at source resolution
            if len(regions) != 2:
                raise ValueError("two speakers need two masks")
            people = [torch.from_numpy(np.asarray(r, dtype=np.float32)) for r in regions]
        elif bboxes is not None:
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
        self.keep = 0  # frames kept for look-back (iterator sources only)
        self._recent: dict[int, Image.Image] = {}
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
        if index < self._pos and index in self._recent:
            return self._recent[index]
        if index < self._pos:
            raise ValueError("frames of an iterator source must be requested in increasing order")
        while self._pos < index:
            try:
                nxt = next(self._iter)
            except StopIteration:
                break
            self._last = _as_pil(nxt)
            self._pos += 1
            if self.keep:  # a look-back window (dubbing strength reads a chunk's frames, then the next start)
                self._recent[self._pos] = self._last
                self._recent.pop(self._pos - self.keep, None)
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
    yield from _GenerationRun(dit, vae, clip_encode, inputs, settings, on_step, should_cancel, trace, resume)


class _GenerationRun:
    """One request's generation loop as numbered stages.

    Set-up (once): 1 check the request, 2 plan the chunks (bucket, latent grid, speaker masks), 3 seed the
    generator, 4 build the sampler (timesteps, guider, TeaCache, pass runner), 5 restore a resumed run's state.
    Per chunk: 6 condition frame and CLIP features, 7 audio windows, 8 noise and VAE-encoded condition,
    9 denoise (10 one step each), 11 decode and colour-match, 12 hand over the new frames.
    The operation order is the reference's: every random draw and VAE call happens in the same sequence
    (the golden tests trace them), so the counters `rng_calls` and `vae_calls` name them as it does.
    """

    def __init__(self, dit, vae, clip_encode, inputs: GenerationInputs, settings: GenerationSettings,
                 on_step, should_cancel, trace, resume: ResumeState | None) -> None:
        self.dit, self.vae, self.clip_encode, self.inputs, self.s = dit, vae, clip_encode, inputs, settings
        self.on_step, self.should_cancel, self.trace, self.resume = on_step, should_cancel, trace, resume
        self.emit: Trace = trace or (lambda name, tensor: None)
        self._check()
        self._plan()
        self._seed()
        self._sampler()
        self._restore()

    # ------------------------------------------------------------------ set-up

    def _check(self) -> None:
        """1. The request is one the loop can render."""
        s, inputs = self.s, self.inputs
        if s.dub_strength < 1.0 and isinstance(inputs.cond, Image.Image):
            raise ValueError("dub_strength below 1 needs a reference video, not an image")
        if s.mode not in ("clip", "streaming"):
            raise ValueError(f"mode must be 'clip' or 'streaming', got {s.mode!r}")
        if not inputs.audio:
            raise ValueError("at least one speaker's audio embedding is needed")
        if len(inputs.audio) > 2:
            raise ValueError(f"one or two speakers are supported, got {len(inputs.audio)}")

    def _plan(self) -> None:
        """2. Chunk plan, output bucket, latent grid and speaker masks (from the first condition frame)."""
        s, inputs = self.s, self.inputs
        self.plan = plan_chunks([a.shape[0] for a in inputs.audio], s.frame_num, s.motion_frame, s.max_frames, s.mode)
        self.frames = _FrameSource(inputs.cond)
        self.frames.keep = s.frame_num if s.dub_strength < 1.0 else 0
        first = self.frames.get(0)
        src_h, src_w = first.height, first.width
        self.th, self.tw = pick_bucket(src_h, src_w, s.bucket_table())
        self.lat_h, self.lat_w = self.th // VAE_STRIDE[1], self.tw // VAE_STRIDE[2]
        self.t_lat = latent_frames(s.frame_num)
        if inputs.ref_target_masks is not None:
            self.masks = inputs.ref_target_masks.float()
        else:
            self.masks = speaker_masks((src_h, src_w), (self.th, self.tw), len(inputs.audio), inputs.bboxes,
                                       inputs.face_scale, inputs.speaker_regions)
        self.motion_mask = None if inputs.motion_mask is None else latent_motion_mask(inputs.motion_mask, (self.th, self.tw))
        self.plan_key = (len(self.plan.chunks), self.plan.total_frames, s.frame_num, s.motion_frame)

    def _seed(self) -> None:
        """3. One CPU generator, seeded once (or at a resumed run's saved position)."""
        s, resume = self.s, self.resume
        self.seed = s.seed if s.seed is not None and s.seed >= 0 else random.randint(0, MAX_SEED)
        if resume is not None:
            if tuple(resume.plan) != self.plan_key or not 0 < resume.next_chunk < len(self.plan.chunks):
                raise ValueError(f"resume state {resume.plan} @ {resume.next_chunk} does not fit this request "
                                 f"{self.plan_key}")
            self.seed = resume.seed
        self.gen = torch.Generator(device="cpu").manual_seed(self.seed)
        self.rng_calls = 0
        if resume is not None:
            self.gen.set_state(resume.rng_state)
            self.rng_calls = resume.rng_calls
        self.vae_calls = 0

    def _sampler(self) -> None:
        """4. Timesteps, guider, TeaCache and the pass runner."""
        s, inputs = self.s, self.inputs
        self.device = next(self.dit.parameters()).device
        self.ts = timesteps(s.sample_steps, s.sample_shift)
        self.guider = Guider(s.guidance)
        self.cache = TeaCache.for_model(s.teacache_model, s.teacache_thresh) if s.use_teacache else None
        self.runner = _PassRunner(self.dit, s.guidance.branches, inputs.context, inputs.context_null, s.batch_passes,
                                  self.cache)

    def _restore(self) -> None:
        """5. Carried state: the colour reference, the last motion frames, the frame count."""
        self.color_ref: LabReference | None = None
        self.color_ref_image: torch.Tensor | None = None
        self.motion_pixels: torch.Tensor | None = None  # last motion_frame corrected frames of the previous chunk
        self.cond_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (frame, CLIP, y latent)
        self.emitted = 0
        self.masks_dev = self.masks.to(self.device)
        resume = self.resume
        if resume is not None:
            self.motion_pixels, self.emitted = resume.motion_pixels.float(), resume.emitted
            if self.s.color_correction_strength > 0.0:  # the reference is chunk 0's condition frame, recomputed
                ref_cond = resize_to_target(self.frames.get(self.plan.chunks[0].audio_start), (self.th, self.tw))
                self.color_ref, self.color_ref_image = lab_reference(ref_cond.to(self.device)), ref_cond

    # ------------------------------------------------------------------ the chunks

    def __iter__(self) -> Iterator[ChunkResult]:
        with torch.no_grad():
            for spec in self.plan.chunks:
                if spec.emit == 0 and spec.index > 0:
                    break  # everything from here on would be cut by the final truncation
                if self.resume is not None and spec.index < self.resume.next_chunk:
                    continue
                cond, clip_fea, same_cond = self._condition(spec)
                audio = self._audio(spec)
                noise, y, motion = self._latents(spec, cond, clip_fea, same_cond)
                latent = self._denoise(spec, noise, motion, clip_fea, y, audio)
                video = self._decode(spec, latent)
                yield self._result(spec, video)
                self.emitted += spec.emit
                del video, latent

    def _draw(self, shape: tuple[int, ...], kind: str) -> torch.Tensor:
        x = torch.randn(shape, generator=self.gen, dtype=torch.float32)
        self.emit(f"rng{self.rng_calls}.{kind}", x)
        self.rng_calls += 1
        return x

    def _encode(self, video: torch.Tensor, cached: torch.Tensor | None = None) -> torch.Tensor:
        """VAE encode, or a cached result of the same input (still traced under its call index, so a trace
        lines up with the reference's call order and a golden check covers the cache too)."""
        out = self.vae.encode(video) if cached is None else cached
        self.emit(f"vae_encode{self.vae_calls}.in", video[0])
        self.emit(f"vae_encode{self.vae_calls}.out", out[0])
        self.vae_calls += 1
        return out

    def _condition(self, spec: ChunkSpec) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """6. The chunk's condition frame (source frame at its audio start) and its CLIP features.

        CLIP features and the condition latent depend on the condition frame alone: an image input (the
        same frame every chunk) computes them once a job, not once a chunk."""
        i = spec.index
        cond = resize_to_target(self.frames.get(spec.audio_start), (self.th, self.tw))  # [1, 3, 1, th, tw]
        if i == 0 and self.s.color_correction_strength > 0.0:
            self.color_ref, self.color_ref_image = lab_reference(cond.to(self.device)), cond
        self.emit(f"chunk{i}.clip_input", cond)
        same_cond = self.cond_cache is not None and torch.equal(self.cond_cache[0], cond)
        if same_cond:
            clip_fea = self.cond_cache[1]
        else:
            clip_fea = self.clip_encode(cond).to(device=self.device, dtype=torch.float32)
        return cond, clip_fea, same_cond

    def _audio(self, spec: ChunkSpec) -> torch.Tensor:
        """7. The chunk's audio windows, [speakers, F, 5, 12, 768]."""
        audio = chunk_audio(self.inputs.audio, spec, self.s.frame_num)
        self.emit(f"chunk{spec.index}.audio_windows", audio)
        return audio

    def _latents(self, spec: ChunkSpec, cond: torch.Tensor, clip_fea: torch.Tensor, same_cond: bool):
        """8. Fresh noise, the condition latent `y` (mask channels + VAE of the padded frame) and the clean
        motion latents (the condition frame in chunk 0, the previous chunk's last frames after)."""
        s, i, th, tw = self.s, spec.index, self.th, self.tw
        noise = self._draw((LATENT_CHANNELS, self.t_lat, self.lat_h, self.lat_w), "randn")
        cond_dev = cond.to(self.device)
        traced = self.trace is not None
        if not same_cond or traced:
            padded = torch.cat([cond_dev, cond_dev.new_zeros(1, 3, s.frame_num - 1, th, tw)], dim=2)
        if same_cond:
            y_lat = self._encode(padded if traced else cond_dev, cached=self.cond_cache[2])
        else:
            y_lat = self._encode(padded)
            self.cond_cache = (cond, clip_fea, y_lat)
        if i == 0:
            motion = self._encode(cond_dev)[0].float()
        else:
            motion = self._encode(self.motion_pixels)[0].float()
        # built where the latent lives: no host round trip of the [1, 20, T, h, w] condition each chunk
        mask = _condition_mask(self.t_lat, self.lat_h, self.lat_w).to(y_lat.device)
        y = torch.cat([mask, y_lat.float()], dim=1).to(self.device)
        self.emit(f"chunk{i}.y", y)
        self.emit(f"chunk{i}.ref_target_masks", self.masks)
        self.still = y_lat[0, :, :1].float().to(self.device)  # the condition frame's latent (motion mask)
        return noise, y, motion.to(self.device)

    def _denoise(self, spec: ChunkSpec, noise: torch.Tensor, motion: torch.Tensor, clip_fea: torch.Tensor,
                 y: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """9. The chunk's sampling steps from fresh noise, the first latent frames pinned to `motion`."""
        i = spec.index
        latent = noise.to(self.device)
        self.chunk_noise = latent.clone() if self.motion_mask is not None else None
        if i > 0:
            self._draw(tuple(motion.shape), "randn_like")  # overwritten by the clean motion latents
        self.guider.reset()
        if self.inputs.scene_contexts:  # per-scene prompts: the text of the scene this chunk starts in
            context = chunk_context(self.inputs.context, self.inputs.scene_contexts, spec.audio_start)
            self.runner.ctx[COND] = self.runner.ctx[DROP_AUDIO] = context
            self.emit(f"chunk{i}.context", context)
        if self.cache is not None:
            self.cache.reset()
        if self.inputs.silent is not None:  # silence handling: this chunk's own audio guidance (silence.py)
            scale = chunk_audio_scale(self.inputs.silent, spec.audio_start, self.s.frame_num,
                                      self.s.audio_guide_scale, self.s.silence_audio_guide_scale)
            self.guider = Guider(replace(self.s.guidance, audio_guide_scale=scale))
            self.emit(f"chunk{i}.audio_guide_scale", torch.tensor([scale]))
        first = self.first_step = 0
        if self.s.dub_strength < 1.0:  # dubbing strength: the last steps only, from the noised reference video
            first = self.first_step = start_step(self.s.sample_steps, self.s.dub_strength)
            latent = noised(self._reference_latents(spec), latent, self.ts[first : first + 1])
            self.emit(f"chunk{i}.dub_start", latent)
        for step in range(first, self.s.sample_steps):
            latent = self._step(spec, step, latent, motion, clip_fea, y, audio)
        self.emit(f"chunk{i}.final_latent", latent)
        return latent

    def _reference_latents(self, spec: ChunkSpec) -> torch.Tensor:
        """The VAE latents of the chunk's own source frames (dubbing strength), [16, T, h, w]."""
        frames = [resize_to_target(self.frames.get(spec.audio_start + k), (self.th, self.tw))
                  for k in range(self.s.frame_num)]
        return self._encode(torch.cat(frames, dim=2).to(self.device))[0].float()

    def _step(self, spec: ChunkSpec, step: int, latent: torch.Tensor, motion: torch.Tensor, clip_fea: torch.Tensor,
              y: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """10. One step: the guidance passes (or the conditional one, between guidance steps), then Euler."""
        i, n_motion = spec.index, spec.motion_latent_frames
        if self.cache is not None:
            self.cache.begin_step(step)
        if self.should_cancel is not None and self.should_cancel():
            raise GenerationCancelled(f"cancelled before step {step + 1} of chunk {i + 1}")
        latent[:, :n_motion] = motion
        t_now = self.ts[step : step + 1]
        self.emit(f"chunk{i}.step{step}.t", t_now)
        full = self.guider.config.full_step(step - self.first_step)  # a chunk's first step always guides
        preds = self.runner(latent, t_now, clip_fea, y, audio, self.masks_dev,
                            self.guider.config.branches if full else (COND,))
        for b in preds:
            self.emit(f"chunk{i}.step{step}.{b}.x", latent)
            self.emit(f"chunk{i}.step{step}.{b}.out", preds[b][None])
        pred = self.guider.combine(preds) if full else self.guider.reuse(preds[COND])
        latent = euler_step(latent, pred, t_now.to(self.device), self.ts[step + 1 : step + 2].to(self.device),
                            NUM_TRAIN_TIMESTEPS)
        if self.motion_mask is not None:  # outside the mask: the condition latent at the next step's noise level
            latent = pin_outside(latent, self.motion_mask, self.still, self.chunk_noise, self.ts[step + 1])
        if i > 0:
            self._draw(tuple(motion.shape), "randn_like")
        latent[:, :n_motion] = motion
        if self.on_step is not None:
            self.on_step(StepInfo(i, len(self.plan.chunks), step, self.s.sample_steps, float(t_now)))
        return latent

    def _decode(self, spec: ChunkSpec, latent: torch.Tensor) -> torch.Tensor:
        """11. VAE decode and colour matching; keeps the last `motion_frame` frames for the next chunk."""
        i = spec.index
        video = self.vae.decode(latent[None]).float()  # [1, 3, F, H, W], stays on the device
        self.emit(f"chunk{i}.decoded", video[0])
        if self.color_ref is not None:
            self.emit(f"chunk{i}.color_in", video)
            self.emit(f"chunk{i}.color_ref", self.color_ref_image)
            video = match_colors(video, self.color_ref, self.s.color_correction_strength)
            self.emit(f"chunk{i}.color_out", video)
        if not spec.is_last:
            self.motion_pixels = video[:, :, -self.s.motion_frame :].clone()
        return video

    def _result(self, spec: ChunkSpec, video: torch.Tensor) -> ChunkResult:
        """12. The chunk's new frames, with the state a resumed run would start from."""
        i, chunks = spec.index, self.plan.chunks
        new = video[0, :, spec.skip : spec.skip + spec.emit].contiguous()
        last = spec.is_last or chunks[i + 1].emit == 0
        state = None
        if not last:
            state = ResumeState(
                next_chunk=i + 1,
                emitted=self.emitted + spec.emit,
                seed=self.seed,
                rng_state=self.gen.get_state(),
                rng_calls=self.rng_calls,
                motion_pixels=self.motion_pixels,
                plan=self.plan_key,
            )
        return ChunkResult(
            index=i,
            n_chunks=len(chunks),
            first_frame=self.emitted,
            total_frames=self.plan.total_frames,
            is_last=last,
            seed=self.seed,
            frames=new,
            frames_uint8=to_uint8_frames(new),
            state=state,
        )
