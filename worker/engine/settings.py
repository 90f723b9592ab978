"""The engine's plain settings: what a caller fills in before any torch code runs.

These dataclasses are torch-free so that the worker can build a request (and `import worker.engine`)
without the engine's heavy imports. Field names are the yaml/job names (`conf/sampler`, `conf/model`,
`conf/gpu`, the job input): one name per setting from the payload to the sampler.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: numpy/PIL are the worker's plain data types
    import numpy as np
    from PIL import Image

QUANTS = ("none", "fp8")


@dataclass(frozen=True)
class GuidanceConfig:
    """Text/audio classifier-free guidance, APG and guidance reuse (see guidance.py)."""

    text_guide_scale: float = 5.0
    audio_guide_scale: float = 4.0
    use_apg: bool = False
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0
    guidance_every: int = 1  # guidance branches run on every k-th step; 1 = every step (the reference)

    def __post_init__(self) -> None:
        if self.guidance_every < 1:
            raise ValueError(f"guidance_every must be >= 1, got {self.guidance_every}")

    def full_step(self, step: int) -> bool:
        """Whether step `step` (0-based, within a chunk) runs every guidance branch."""
        return step % self.guidance_every == 0

    @property
    def two_pass(self) -> bool:
        return math.isclose(self.text_guide_scale, 1.0)

    @property
    def one_pass(self) -> bool:
        """Both scales 1: the guided prediction is the conditional one, so only that pass runs."""
        return self.two_pass and math.isclose(self.audio_guide_scale, 1.0)

    @property
    def branches(self) -> tuple[str, ...]:
        """DiT passes per step, in the reference's call order.

        cond: prompt + audio; drop_text: negative prompt + audio; uncond: negative prompt +
        zero audio; drop_audio: prompt + zero audio (only in the two-pass mode).
        """
        if self.one_pass:
            return ("cond",)
        return ("cond", "drop_audio") if self.two_pass else ("cond", "drop_text", "uncond")


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings of one request.

    Defaults are the reference CLI defaults for infinitetalk-480, except `motion_frame`: 9, the worker
    config's default (the reference CLI's is 25); tests that follow the reference pass it explicitly.
    """

    sample_steps: int = 40
    sample_shift: float = 7.0
    text_guide_scale: float = 5.0
    audio_guide_scale: float = 4.0
    seed: int | None = 42  # None or negative: drawn at random, reported in the chunk results
    frame_num: int = 81
    motion_frame: int = 9
    max_frames: int = 1000  # streaming only; clip mode always renders one chunk of frame_num frames
    mode: str = "streaming"  # "clip" | "streaming"
    color_correction_strength: float = 1.0
    bucket: str | Mapping[str, Any] = "infinitetalk-480"  # tier name or an explicit bucket table
    frame_size: tuple[int, int] | None = None  # (height, width) in real pixels: one bucket replacing the tier's table
    use_apg: bool = False
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0
    batch_passes: bool = True  # guidance passes with the same speaker count share one DiT call
    use_teacache: bool = False  # skip block stacks while the timestep input barely moves (teacache.py)
    teacache_thresh: float = 0.2
    teacache_model: str = "infinitetalk-480"  # which upstream rescale polynomial applies
    guidance_every: int = 1  # guidance branches every k-th step, the correction reused between (guidance.py)
    # Silence handling (sampling/silence.py), when silence_handling: frames in a run of at least silence_min_s
    # seconds below silence_threshold_db dBFS get the embedding of true silence, and a chunk's audio guidance
    # moves toward silence_audio_guide_scale by its share of silent frames.
    silence_handling: bool = False
    silence_threshold_db: float = -45.0
    silence_min_s: float = 0.3
    silence_audio_guide_scale: float = 1.0
    # Video dubbing (sampling/dubbing.py): below 1, each chunk runs the last round(steps * dub_strength) steps from
    # its reference video's latents noised to that step; 1 = from pure noise (the reference).
    dub_strength: float = 1.0

    @property
    def guidance(self) -> GuidanceConfig:
        return GuidanceConfig(
            text_guide_scale=self.text_guide_scale,
            audio_guide_scale=self.audio_guide_scale,
            use_apg=self.use_apg,
            apg_momentum=self.apg_momentum,
            apg_norm_threshold=self.apg_norm_threshold,
            guidance_every=self.guidance_every,
        )

    def bucket_table(self) -> Mapping[str, tuple[list[int], int]]:
        from worker.engine.sampling.buckets import BUCKET_TABLES  # torch side: only when a generation runs

        if isinstance(self.bucket, str) and self.frame_size is not None:
            h, w = self.frame_size
            return {f"{h / w:.2f}": ([h, w], 1)}  # the job's framing: every input maps onto this one size
        if isinstance(self.bucket, str):
            try:
                return BUCKET_TABLES[self.bucket]
            except KeyError:
                raise ValueError(f"unknown bucket tier {self.bucket!r}; known: {sorted(BUCKET_TABLES)}") from None
        return {k: tuple(v) for k, v in self.bucket.items()}


@dataclass(frozen=True)
class EngineOptions:
    """Placement choices, filled from the GPU tier config."""

    device: str = "cpu"
    dtype: str = "float32"
    # "fp8": the DiT's block Linears are FP8Linear (kernels/fp8_linear.py), one byte a weight, filled from an fp8
    # bundle or upstream's quant file kept in fp8 (see `Engine._fill_fp8`); "none": `dtype` throughout.
    quant: str = "none"
    attention: str = "sdpa"  # sdpa | flash_attn | sageattention | xformers | auto (kernels/attention.py)
    offload_t5: bool = False  # keep umT5 on the CPU (it is used once per prompt)
    text_cache_size: int = 16
    compile: bool = False  # torch.compile each DiT block (kernels/compile.py): GPU tiers only
    # LoRA merged at load (the worker's default preset): `lora_file` relative to `lora_dir` or absolute.
    # A request naming another LoRA switches lazily, see `Engine.use_lora`.
    lora_dir: str = ""
    lora_file: str = ""
    lora_scale: float = 1.0
    # Low VRAM (offload.py): CLIP / VAE weights parked in host memory between uses, and the last
    # `stream_blocks` DiT blocks kept in pinned host memory and copied in for each forward.
    offload_clip: bool = False
    offload_vae: bool = False
    stream_blocks: int = 0
    # False: every guidance pass is its own DiT call, whatever the request's settings say: the peak
    # activations of a step drop to one pass's (half, with two passes), the DiT work stays the same;
    # the 24 GB tier needs it. True: as each request's settings say.
    batch_passes: bool = True
    # Chaos testing: "oom@step" raises the accelerator's out-of-memory error at the first sampling
    # step of the next job (once), exactly where a real one surfaces; empty in production.
    fault: str = ""


@dataclass(frozen=True)
class EngineRequest:
    """One generation, already decoded by the worker: condition frames, 16 kHz audio per speaker, prompts."""

    cond: Image.Image | Iterable[Image.Image]
    audio_tracks: tuple[np.ndarray, ...]
    prompt: str
    negative_prompt: str
    settings: GenerationSettings
    bboxes: tuple[tuple[float, float, float, float], ...] | None = None
    motion_mask: np.ndarray | None = None  # bool [H, W] source pixels: where motion is allowed (job field mask)
    speaker_regions: tuple[np.ndarray, ...] | None = None  # bool [H, W] per speaker (job field masks; not with bboxes)
    # The preset's LoRA (relative to EngineOptions.lora_dir): None keeps whatever the engine has
    # merged, "" asks for the plain model.
    lora_file: str | None = None
    lora_scale: float = 1.0
    # Per-scene prompts: (first audio frame at 25 fps, text), sorted; a chunk starting at or after a scene's
    # frame (and before the next) samples with its text, earlier chunks with `prompt`.
    scenes: tuple[tuple[int, str], ...] = ()
    # The job's own LoRAs (job field loras): (local safetensors file, scale), merged on top of the preset's for
    # this request only and taken off bit-exactly after it (formats/user_loras.py).
    user_loras: tuple[tuple[str, float], ...] = ()
