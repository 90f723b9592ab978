"""The engine as the worker sees it: load every component once, then turn plain requests into frames.

The worker talks to this module with plain data (numpy audio, PIL images, frozen dataclasses),
so nothing outside `worker/engine/` needs torch. Loading goes through `loaders.load_module`,
which names the file and key of any bad weight.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from worker.engine.kernels.attention import set_attention_backend
from worker.engine.sampling.audio_windows import pad_tail
from worker.engine.models.audio_embed import Wav2Vec2Embedder
from worker.engine.sampling.buckets import BUCKET_TABLES
from worker.engine.models.clip_visual import CLIPVisionConfig, CLIPVisionTower
from worker.engine.kernels.compile import compile_dit
from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT
from worker.engine.errors import EngineOOMError, WeightLoadError
from worker.engine.formats.fp8 import load_fp8_state, stored_fp8_modules
from worker.engine.kernels.fp8_linear import convert_linears, convert_stored, prime_fused
from worker.engine.sampling.generation import ChunkResult, GenerationInputs, ResumeState, StepInfo, generate
from worker.engine.formats.layout import CheckpointLayout
from worker.engine.formats.loaders import _materialise_leftovers, load_module
from worker.engine.formats.lora import merge_lora, resolve_lora_path
from worker.engine.formats.user_loras import UserLoraStats, check_user_loras, user_loras
from worker.engine.kernels.offload import HOST, BlockStreamer, OffloadedVAE, resident
from worker.engine.settings import QUANTS, EngineOptions, EngineRequest
from worker.engine.sampling.silence import silent_frames
from worker.engine.models.t5 import T5Config, T5TextEncoder, UMT5Encoder
from worker.engine.models.vae import VAEConfig, WanVAE, WanVAEModel

_log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadReport:
    seconds: dict[str, float] = field(default_factory=dict)


def _bucket_scale(table: dict, scale: float) -> dict:
    """A smaller copy of a bucket table (the tiny model renders at 1/8 of the real sizes)."""
    def snap(v: int) -> int:
        return max(16, int(round(v * scale / 16)) * 16)

    return {ratio: ([snap(h), snap(w)], n) for ratio, ([h, w], n) in table.items()}


class Engine:
    """All components on their devices, plus a small per-prompt text cache."""

    def __init__(self, layout: CheckpointLayout, options: EngineOptions) -> None:
        self.layout = layout
        self.options = options
        self.device = torch.device(options.device)
        self.dtype = DTYPES[options.dtype]
        self.report = LoadReport()
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._components = layout.component_overrides()
        self._fault_armed = options.fault == "oom@step"
        if options.quant not in QUANTS:
            raise ValueError(f"EngineOptions.quant must be one of {QUANTS}, not {options.quant!r}")
        self.attention_backend = set_attention_backend(options.attention, self.device,
                                                       fp8=options.quant == "fp8")
        layout.check()
        # No transformers on this path: its cold import cost more than reading every weight file (the tokenizer
        # runs on `tokenizers`, wav2vec2 is ours; bench/README.md section 17).
        self.dit = self._timed("dit", self._load_dit if not options.stream_blocks else self._load_dit_streamed)
        self.lora: tuple[str, float] | None = None  # (resolved path, scale) merged into self.dit
        self.user_lora_stats = UserLoraStats()  # the last request's own LoRAs (merge/unmerge seconds)
        self.baked_loras = self._baked_loras()  # LoRA file name -> strength, merged by `weights repack`
        if options.lora_file:
            self._timed("lora", lambda: self.use_lora(options.lora_file, options.lora_scale))
        self.vae = self._timed("vae", self._load_vae)
        self.text_encoder = self._timed("t5", self._load_t5)
        self.clip = self._timed("clip", self._load_clip)
        self.audio_embedder = self._timed("wav2vec2", self._load_wav2vec)
        if options.compile:
            compile_dit(self.dit)  # lazy: the first forward of each shape compiles
        _log.info("engine kernels: attention=%s (asked %s), linears=%s, compile=%s, device=%s",
                  self.attention_backend, options.attention,
                  "fp8" if options.quant == "fp8" else options.dtype, options.compile, self.device)

    @classmethod
    def load(cls, layout: CheckpointLayout, options: EngineOptions | None = None) -> Engine:
        return cls(layout, options or EngineOptions())

    # ------------------------------------------------------------------ loading

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        except torch.OutOfMemoryError as exc:
            raise EngineOOMError(f"out of memory while loading {name}: {exc}") from exc
        finally:
            self.report.seconds[name] = round(time.perf_counter() - start, 3)

    def _config(self, name: str, cls, default):
        data = self._components.get(name)
        return cls(**data) if data else default

    def _load_dit(self) -> InfiniteTalkDiT:
        try:
            cfg = DiTConfig.from_json(self.layout.dit_config)
        except (OSError, ValueError, TypeError) as exc:
            raise WeightLoadError(str(self.layout.dit_config), None, f"invalid DiT config: {exc}") from exc
        with torch.device("meta"):
            dit = InfiniteTalkDiT(cfg)
        if self.options.quant == "fp8":
            self._fill_fp8(dit)
        elif self.layout.dit_bundle is not None:
            from worker.engine.formats.bundle import load_bundle_into

            load_bundle_into(dit, self.layout.dit_bundle, device=self.device, dtype=self.dtype)
        else:
            load_module(dit, self.layout.dit_files, device=self.device, dtype=self.dtype)
        return dit.eval().requires_grad_(False)

    def _fill_fp8(self, dit: InfiniteTalkDiT) -> None:
        """The DiT with fp8 block Linears, from (first found) an fp8 bundle of ours, upstream's quanto
        file (`layout.quant_file`), or else a bf16 bundle / the original shards quantised per row here.

        Files already in fp8 are loaded as fp8 straight onto the device: no dequantised copy is ever
        held, so the DiT takes about half its bf16 bytes. Which Linears become fp8 follows the file
        (`stored_fp8_modules`). Quantising at load reads the source into host memory first (a full
        bf16 copy on the card is what fp8 is meant to avoid), then moves the quantised model over.
        """
        bundle, quant_file = self.layout.dit_bundle, self.layout.quant_file
        if bundle is not None:
            from worker.engine.formats.bundle import read_bundle_metadata

            read_bundle_metadata(bundle)  # a non-bundle is named as such
        source = bundle if bundle is not None else quant_file
        stored = stored_fp8_modules([source]) if source is not None else {}
        if stored:
            convert_stored(dit, stored)
            load_fp8_state(dit, [source], device=self.device, dtype=self.dtype)
            prime_fused(self.device)  # the fp8 matmul path is decided once per device, before the first forward
            _materialise_leftovers(dit, self.device)
            return
        if bundle is None and quant_file is not None:
            raise WeightLoadError(str(quant_file), None, "no fp8 weights in the quant file "
                                  "(expected `<m>.weight._data` or `<m>.weight` + `<m>.weight.scale`)")
        # Quantise where the bf16 copy fits: on the card when it has room for it (the per-row amax and casts take
        # seconds there, minutes on the host's cores), else in host memory, then the fp8 model moves over.
        where = self.device if _fits_on_device(dit, self.device, self.dtype) else HOST
        if bundle is not None:
            from worker.engine.formats.bundle import load_bundle_into

            load_bundle_into(dit, bundle, device=where, dtype=self.dtype)
        else:
            load_module(dit, self.layout.dit_files, device=where, dtype=self.dtype)
        convert_linears(dit)
        dit.to(self.device)
        if where != HOST:
            torch.cuda.empty_cache()

    def _load_dit_streamed(self) -> InfiniteTalkDiT:
        """Loaded into host memory (the whole DiT would not fit the card), then everything but the
        streamed blocks moves to the device."""
        device, self.device = self.device, HOST
        try:
            dit = self._load_dit()
        finally:
            self.device = device
        BlockStreamer.attach(dit, self.options.stream_blocks, device)
        return dit

    def _load_vae(self) -> WanVAE:
        cfg = self._config("vae", lambda **kw: VAEConfig.from_dict(kw), VAEConfig())
        model = WanVAEModel.on_meta(cfg)
        device = HOST if self.options.offload_vae else self.device
        load_module(model, [self.layout.vae_file], device=device, dtype=self.dtype)
        return OffloadedVAE(WanVAE(model), self.device) if self.options.offload_vae else WanVAE(model)

    def _load_t5(self) -> T5TextEncoder:
        cfg = self._config("t5", lambda **kw: T5Config(**kw), T5Config())
        device = torch.device("cpu") if self.options.offload_t5 else self.device
        model = UMT5Encoder.from_original_checkpoint(self.layout.t5_file, cfg, dtype=self.dtype, device=device)
        text_len = int(self._components.get("t5_text_len", 512))
        if not self.layout.t5_tokenizer.is_dir():
            raise WeightLoadError(str(self.layout.t5_tokenizer), None, "tokenizer folder not found")
        try:
            return T5TextEncoder(model, self.layout.t5_tokenizer, text_len=text_len)
        except Exception as exc:  # tokenizers/transformers raise many types for a broken tokenizer folder
            raise WeightLoadError(str(self.layout.t5_tokenizer), None, f"cannot load tokenizer: {exc}") from exc

    def _load_clip(self) -> CLIPVisionTower:
        cfg = self._config("clip", lambda **kw: CLIPVisionConfig(**kw), CLIPVisionConfig())
        device = HOST if self.options.offload_clip else self.device
        return CLIPVisionTower.from_original_checkpoint(self.layout.clip_file, cfg, dtype=self.dtype, device=device)

    def _load_wav2vec(self) -> Wav2Vec2Embedder:
        return Wav2Vec2Embedder.from_pretrained(self.layout.wav2vec_dir, device=self.device, dtype=torch.float32)

    def _baked_loras(self) -> dict[str, float]:
        bundle = self.layout.dit_bundle
        if bundle is None:
            return {}
        from worker.engine.formats.bundle import read_bundle_metadata

        return {str(e["file"]): float(e.get("strength", 1.0)) for e in read_bundle_metadata(bundle)["loras"]}

    def use_lora(self, lora_file: str | None, scale: float = 1.0) -> None:
        """Make the DiT carry exactly this LoRA (None or "": none), merging lazily once per (file, scale).

        A worker serves its default preset, merged at load, so switching is the exception (a job that
        names another preset). Switching subtracts the merged LoRA's recomputed delta and adds the new
        one: exact up to float32 rounding on a float32 model; on a bf16 model each switch rounds the
        touched weights once more (at most one bf16 ulp each), which is far below the LoRA's own
        effect, and a worker that keeps switching should be given its own endpoint per preset.
        LoRAs a bundle was repacked with belong to its weights: a preset naming one (same file name and
        strength) merges nothing more, and presets without a LoRA keep them.
        """
        path = resolve_lora_path(lora_file, self.options.lora_dir)
        if path is not None and path.name in self.baked_loras:
            # the bundle was repacked with this LoRA: it is part of the weights already (merging it here
            # would apply it twice); a different strength cannot be reached without the base weights
            baked = self.baked_loras[path.name]
            if not math.isclose(baked, float(scale), rel_tol=1e-6):
                raise WeightLoadError(str(self.layout.dit_bundle), None, f"the bundle has LoRA {path.name} merged "
                                      f"at strength {baked}; the preset asks for {scale}: repack it or change lora_scale")
            path = None
        want = None if path is None else (str(path), float(scale))
        if want == self.lora:
            return
        with torch.inference_mode(False), torch.no_grad():
            if self.lora is not None:
                merge_lora(self.dit, self.lora[0], -self.lora[1])
                self.lora = None
            if want is not None:
                merge_lora(self.dit, want[0], want[1])
                self.lora = want

    def check_user_loras(self, files: Iterable[str]) -> None:
        """The job's own LoRA files fit the DiT (keys, shapes, dtypes; headers only), else LoraFitError naming
        `loras[i]` and the key: the worker asks before the job renders anything."""
        check_user_loras(self.dit, list(files))

    # ------------------------------------------------------------------ encoders

    def bucket_table(self, size: str, frame_size: tuple[int, int] | None = None) -> dict:
        """The tier's table, or the job's one framed size (scaled like the table for a small model)."""
        table = BUCKET_TABLES[size] if frame_size is None else {"1.00": ([frame_size[0], frame_size[1]], 1)}
        scale = float(self._components.get("bucket_scale", 1.0))
        return table if scale == 1.0 else _bucket_scale(table, scale)

    def embed_audio(self, tracks: Iterable[np.ndarray]) -> tuple[torch.Tensor, ...]:
        return tuple(self.audio_embedder.embed(t) for t in tracks)

    def silence_audio(
        self, tracks: Iterable[np.ndarray], embeddings: tuple[torch.Tensor, ...], settings: Any
    ) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
        """Silence handling (sampling/silence.py): each track's silent frames get the wav2vec2 embedding of true
        silence (zeros of the same length, so the frames line up); returns the embeddings and the frames where
        every speaker is silent (what the chunk guidance follows)."""
        out, masks = [], []
        for track, emb in zip(tracks, embeddings):
            mask = silent_frames(track, emb.shape[0], settings.silence_threshold_db, settings.silence_min_s)
            if mask.any():
                quiet = self.audio_embedder.embed(np.zeros_like(np.asarray(track)), seq_len=emb.shape[0])
                emb = emb.clone()
                emb[torch.from_numpy(mask)] = quiet[torch.from_numpy(mask)]
            out.append(emb)
            masks.append(mask)
        n = max(m.shape[0] for m in masks)
        every = np.ones(n, dtype=bool)
        for m in masks:
            every[: m.shape[0]] &= m
        return tuple(out), every

    def encode_text(self, text: str) -> torch.Tensor:
        """T5 context `[L, dim]` on the compute device; cached per prompt (prompts repeat across jobs)."""
        hit = self._text_cache.get(text)
        if hit is not None:
            self._text_cache.move_to_end(text)
            return hit
        context = self.text_encoder.encode([text])[0].to(self.device, self.dtype)
        self._text_cache[text] = context
        while len(self._text_cache) > self.options.text_cache_size:
            self._text_cache.popitem(last=False)
        return context

    def _text_contexts(self, request: EngineRequest) -> dict[str, Any]:
        """`context` and the per-scene contexts, each distinct prompt encoded once for the job."""
        done: dict[str, torch.Tensor] = {}

        def encode(text: str) -> torch.Tensor:
            if text not in done:
                done[text] = self.encode_text(text)
            return done[text]

        scenes = request.scenes
        base = scenes[0][1] if scenes and scenes[0][0] == 0 else request.prompt  # the job's prompt only if used
        return {"context": encode(base), "scene_contexts": tuple((first, encode(text)) for first, text in scenes)}

    def encode_clip(self, image: torch.Tensor) -> torch.Tensor:
        if self.options.offload_clip:
            with resident(self.clip, self.device):
                return self.clip.encode(image.to(self.device))
        return self.clip.encode(image.to(self.device))

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        request: EngineRequest,
        *,
        on_step: Callable[[StepInfo], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        resume: bytes | None = None,
    ) -> Iterator[ChunkResult]:
        """`resume`: `ChunkResult.state.to_bytes()` of an earlier run of the same request (a retried job)."""
        settings = request.settings
        if not self.options.batch_passes:
            settings = replace(settings, batch_passes=False)
        if request.lora_file is not None:
            self.use_lora(request.lora_file, request.lora_scale)
        if isinstance(settings.bucket, str):
            settings = replace(settings, bucket=self.bucket_table(settings.bucket, settings.frame_size))
        embeddings = self.embed_audio(request.audio_tracks)
        silent = None
        if settings.silence_handling:
            embeddings, silent = self.silence_audio(request.audio_tracks, embeddings, settings)
        if max(e.shape[0] for e in embeddings) <= settings.frame_num:
            settings = replace(settings, mode="clip")  # all of it fits one chunk
        audio = tuple(_extend_short_audio(a, settings.frame_num + 1) for a in embeddings)
        inputs = GenerationInputs(
            cond=request.cond,
            audio=audio,
            **self._text_contexts(request),
            context_null=self.encode_text(request.negative_prompt),
            bboxes=request.bboxes,
            motion_mask=request.motion_mask,
            speaker_regions=request.speaker_regions,
            silent=None if silent is None else _pad_false(silent, max(a.shape[0] for a in audio)),
        )
        if self._fault_armed:
            self._fault_armed = False
            on_step = _raise_oom_on_first_step(on_step)
        # the job's own LoRAs for this generation only: off again (bit-exact) when it ends, fails or is cancelled
        self.user_lora_stats = UserLoraStats()
        with user_loras(self.dit, request.user_loras) as self.user_lora_stats, torch.inference_mode():
            yield from generate(
                self.dit,
                self.vae,
                self.encode_clip,
                inputs,
                settings,
                on_step=on_step,
                should_cancel=should_cancel,
                resume=ResumeState.from_bytes(resume) if resume is not None else None,
            )


def _fits_on_device(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, headroom: float = 1.25) -> bool:
    """Whether `module` (still on meta) fits in `device`'s free memory in `dtype`, with headroom; False off CUDA."""
    if device.type != "cuda":
        return False
    need = sum(p.numel() for p in module.parameters()) * torch.empty((), dtype=dtype).element_size()
    free, _total = torch.cuda.mem_get_info(device)
    return free >= need * headroom


def _pad_false(mask: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(max(length, mask.shape[0]), dtype=bool)
    out[: mask.shape[0]] = mask
    return out


def _extend_short_audio(embedding: torch.Tensor, min_frames: int) -> torch.Tensor:
    """Audio shorter than one chunk is mirrored out to a chunk (the reference refuses it); the extra
    frames are cut again when the MP4 is trimmed to the real audio length."""
    while embedding.shape[0] < min_frames:
        embedding = pad_tail(embedding, min(embedding.shape[0], min_frames - embedding.shape[0]))
    return embedding


def _raise_oom_on_first_step(inner: Callable[[StepInfo], None] | None) -> Callable[[StepInfo], None]:
    def on_step(info: StepInfo) -> None:
        if inner is not None:
            inner(info)
        raise torch.OutOfMemoryError("injected out-of-memory (EngineOptions.fault='oom@step')")

    return on_step
