"""The job contract: what goes in `{"input": {...}}` and what comes back.

Field names follow ARCHITECTURE.md section 3; the seed guide's and upstream InfiniteTalk's
names are accepted as aliases (`cond_image`, `cond_video`, `cond_audio`, `tts_audio`,
`sample_text_guide_scale`, `sample_audio_guide_scale`, `base_seed`, `max_duration`, ...),
so payloads written for the seed keep working. Unknown top-level keys are refused so that
typos are reported instead of silently ignored.

The JSON schema for clients is `JobInput.model_json_schema()` (or `job_input_json_schema()`;
`infinitetalk schema` prints it). It lists canonical names; the aliases are accepted too.

Only shape and bounds are checked here. Whether a path lies under an allowed root, whether
a host is private, and whether a value fits the worker's GPU tier are decided later
(download stage, `worker.resolve.apply_job_overrides`).
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    ValidationError,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contract.choices import (
    ASPECTS, LORA_SCALE_LIMIT, MAX_FRAME_RATIO, MAX_LORAS, MAX_SCENE_PROMPTS, MIN_FRAME_RATIO, MODES, OUTPUT_TARGETS,
    SAMPLER_PRESETS, SIZE_PIXELS, SIZES, TRIM_TAIL_S, VOICE_NAME_PATTERN,
)
from contract.choices import AUDIO_MUX_CHOICES
from contract.errors import InputProblem, JobError, error_from_pydantic, safe_preview

__all__ = [
    "MediaRefKind",
    "media_ref_kind",
    "validate_media_ref",
    "SpeakerAudio",
    "TtsSpec",
    "OutputSpec",
    "LoraSpec",
    "JobInput",
    "JobOutput",
    "parse_job_input",
    "job_input_json_schema",
    "SIZES",
    "MODES",
    "SAMPLER_PRESETS",
    "MAX_SEED",
]

MAX_SEED = 2**32 - 1
# The longest frame side: the longest in the model's own bucket tables (infinitetalk-720's 448x2048). Without it a
# 57600x16 frame fit the pixel budget, rendered, and then failed in the H.264 encoder (libx264 takes <= 16384), and
# a 4000-digit width made the tier check echo 12 KB of digits.
MAX_SIDE = 2048
DEFAULT_NEGATIVE_PROMPT = (
    # The negative prompt InfiniteTalk's config ships with (a model fact: the guidance was tuned with it).
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, "
    "messy background, three legs, many people in the background, walking backwards"
)

# Literals built from contract.choices (conf/'s option names), so the schema's enums follow conf/.
Size = Literal[SIZES]  # type: ignore[valid-type]
Aspect = Literal[ASPECTS]  # type: ignore[valid-type]
Mode = Literal[MODES]  # type: ignore[valid-type]
SamplerPreset = Literal[SAMPLER_PRESETS]  # type: ignore[valid-type]
OutputTarget = Literal[OUTPUT_TARGETS]  # type: ignore[valid-type]
AudioType = Literal["add", "para"]
AudioMux = Literal[AUDIO_MUX_CHOICES]  # type: ignore[valid-type]
Person = Literal["person1", "person2"]

# ---------------------------------------------------------------------------------------
# Media references

MediaRefKind = Literal["https", "http", "data", "s3", "path"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_S3 = re.compile(r"^s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(.+)$")
_DATA = re.compile(r"^data:([\w.+\-]+/[\w.+\-]+)?((?:;[\w.+\-]+=[\w.+\-]+)*);base64,", re.I)
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-\s]*$")
MAX_REF_CHARS = 4096  # URLs and paths; data: URIs are bounded by Runpod's payload cap instead
MAX_NAME_BYTES = 255  # Linux NAME_MAX: one path component
MAX_PATH_BYTES = 4096  # Linux PATH_MAX, with its closing NUL
MAX_S3_KEY_BYTES = 1024  # S3's object key limit


def media_ref_kind(ref: str) -> MediaRefKind:
    """Classify an already validated media ref (the download stage dispatches on this)."""
    low = ref[:8].lower()
    if low.startswith("https://"):
        return "https"
    if low.startswith("http://"):
        return "http"
    if low.startswith("data:"):
        return "data"
    if low.startswith("s3://"):
        return "s3"
    return "path"


def validate_media_ref(ref: Any, *, allow_http: bool = False) -> str:
    """Check a media ref's form; raises ValueError with a message safe to show users."""
    if not isinstance(ref, str):
        raise ValueError("a media ref must be a string: an https:// URL, a data: URI, s3://bucket/key or a path")
    ref = ref.strip()
    if not ref:
        raise ValueError("media ref is empty")
    if "\x00" in ref:
        raise ValueError("media ref contains a NUL byte")
    m = _SCHEME.match(ref)
    scheme = m.group(1).lower() if m else None
    # A one-letter "scheme" is a Windows drive letter, which we treat as a path (and refuse later by root).
    if scheme is not None and len(scheme) == 1:
        scheme = None
    if scheme == "data":
        if not _DATA.match(ref):
            raise ValueError("data: URIs must be base64, e.g. data:audio/wav;base64,UklGR…")
        payload = ref.split(",", 1)[1]
        if not payload:
            raise ValueError("data: URI has no payload")
        if not _B64_CHARS.match(payload[:4096]):
            raise ValueError("data: URI payload is not base64")
        return ref
    if len(ref) > MAX_REF_CHARS:
        raise ValueError(f"media ref is longer than {MAX_REF_CHARS} characters")
    if scheme == "https":
        _check_url(ref)
        return ref
    if scheme == "http":
        if not allow_http:
            raise ValueError("plain http:// URLs are refused on this worker; use https://")
        _check_url(ref)
        return ref
    if scheme == "s3":
        m3 = _S3.match(ref)
        if not m3:
            raise ValueError("s3 refs must look like s3://bucket/key")
        if len(m3.group(2).encode("utf-8", "surrogatepass")) > MAX_S3_KEY_BYTES:
            raise ValueError(f"s3 key is longer than S3 allows ({MAX_S3_KEY_BYTES} bytes)")
        return ref
    if scheme is not None:
        raise ValueError(
            f"unsupported scheme {scheme}:// ; use an https:// URL, a data: URI, s3://bucket/key "
            "or a path on the worker's volume"
        )
    _check_path_lengths(ref)
    return ref


def _check_path_lengths(ref: str) -> None:
    """Linux's limits, checked here so an over-long path is the caller's error, not a failed read on the worker."""
    if len(ref.encode("utf-8", "surrogatepass")) >= MAX_PATH_BYTES:
        raise ValueError(f"path is longer than the file system allows ({MAX_PATH_BYTES - 1} bytes)")
    for part in ref.split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ValueError(f"a path component is longer than the file system allows ({MAX_NAME_BYTES} bytes)")


def _check_frame_ratio(width: int, height: int) -> None:
    """A frame the model can render: height/width within its bucket tables' extremes (about 1:4.6 to 4:1)."""
    ratio = height / width
    if MIN_FRAME_RATIO <= ratio <= MAX_FRAME_RATIO:
        return
    if ratio < MIN_FRAME_RATIO:  # too wide: raise the height
        field, fix = "height", f"height {math.ceil(width * MIN_FRAME_RATIO / 16) * 16} or more with width {width}"
    else:  # too tall: widen
        field, fix = "width", f"width {math.ceil(height / MAX_FRAME_RATIO / 16) * 16} or more with height {height}"
    raise InputProblem(field, f"a {width}x{height} frame is more lopsided than the model renders: height/width "
                       f"must lie between {MIN_FRAME_RATIO:.4g} (448x2048) and {MAX_FRAME_RATIO:g} (1280x320)",
                       hint=f"Use {fix}, or an aspect such as 16:9 or 9:16.")


def _check_url(ref: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(ref)
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        raise ValueError(f"malformed URL: {exc}") from None
    if not parts.hostname:
        raise ValueError("URL has no host")
    from contract.urlform import url_problem

    problem = url_problem(ref)
    if problem:
        raise ValueError(f"malformed URL: {problem}")
    if parts.username or parts.password:
        raise ValueError("URLs with embedded credentials (user:pass@host) are refused")


def _allow_http(info: ValidationInfo) -> bool:
    ctx = info.context or {}
    return bool(ctx.get("allow_http", False))


# ---------------------------------------------------------------------------------------
# Sub-models


def _no_nul(v: str) -> str:
    # The TTS phonemizer (espeak-ng) and other C consumers stop at NUL: the rest of the text would vanish silently.
    if "\x00" in v:
        raise ValueError("text contains a NUL character (\\u0000)")
    return v


Text = Annotated[str, AfterValidator(_no_nul)]
_VOICE_NAME = re.compile(VOICE_NAME_PATTERN)

# strict: the contract is JSON's types, not Python's coercions (`true` is not a step count, "42" is
# not a seed, "yes" is not a boolean, 2.0 is not an integer); floats still take JSON integers.
_STRICT = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True, strict=True)



class SpeakerAudio(BaseModel):
    """Audio per speaker. A bare ref in `audio` is read as `{"person1": ref}`."""

    model_config = _STRICT

    person1: str = Field(description="Speaker 1's speech: an https:// URL, a data: URI, s3://bucket/key or a volume path.")
    person2: str | None = Field(default=None, description="Speaker 2's speech (needs audio_type); leave out for one speaker.")

    @field_validator("person1", "person2", mode="before")
    @classmethod
    def _ref(cls, v: Any, info: ValidationInfo) -> Any:
        return v if v is None else validate_media_ref(v, allow_http=_allow_http(info))

    @property
    def speakers(self) -> int:
        return 2 if self.person2 else 1


_TTS_S2 = re.compile(r"\(s2\)", re.I)


class TtsSpec(BaseModel):
    """Text to speech instead of audio; two speakers are marked (s1) / (s2) in the text."""

    model_config = _STRICT

    text: Text = Field(
        min_length=1, max_length=10_000,
        description="The words to speak (up to 10,000 characters); mark two speakers' turns with (s1) and (s2).",
    )
    voice: str | None = Field(
        default=None, max_length=4096, validation_alias=AliasChoices("voice", "human1_voice", "voice1"),
        description="Kokoro voice pack of speaker 1, e.g. af_heart (the default), am_michael, bf_emma.",
        json_schema_extra={"default": "af_heart"},
    )
    voice2: str | None = Field(
        default=None, max_length=4096, validation_alias=AliasChoices("voice2", "human2_voice"),
        description="Kokoro voice pack of speaker 2 (text marked (s2)); default am_michael.",
        json_schema_extra={"default": "am_michael"},
    )

    @property
    def speakers(self) -> int:
        return 2 if _TTS_S2.search(self.text) else 1

    @field_validator("voice", "voice2")
    @classmethod
    def _voice_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not _VOICE_NAME.match(v):
            raise InputProblem(f"tts.{info.field_name}", "must be a voice pack name: letters, digits, _ and -, up to 64 "
                               "characters", hint=f"Set tts.{info.field_name} to a Kokoro voice such as af_heart.")
        return v

    @model_validator(mode="after")
    def _voices(self) -> "TtsSpec":
        if self.voice2 and self.speakers < 2:
            raise InputProblem(
                "tts.voice2", "voice2 needs a second speaker marked (s2) in the text",
                hint="Mark the second speaker's words with (s2) in tts.text, or leave tts.voice2 out.",
            )
        return self


class ScenePrompt(BaseModel):
    """One scene's prompt: it applies to the chunks that start from `from_s` on (until the next scene)."""

    model_config = _STRICT

    from_s: float = Field(ge=0, le=86_400, description="Where the scene starts, in seconds of the audio (0 or more).")
    text: Text = Field(max_length=4000, description="What the video shows from from_s on, in words (up to 4000 characters).")


class LoraSpec(BaseModel):
    """One user LoRA, merged into the DiT for this job only (on top of the preset's) and removed after it."""

    model_config = _STRICT

    ref: str = Field(
        description="The LoRA file, safetensors only (Wan2.1 / InfiniteTalk key names): a name relative to the "
        "worker's LoRA folder, an absolute path on the worker's volume, an https:// URL, s3://bucket/key or a data: "
        "URI; fetched with the same rules as other media, at most the worker's LoRA size cap (server.download."
        "max_lora_bytes, 2 GiB), cached by content hash.",
    )
    scale: float = Field(
        default=1.0, ge=-LORA_SCALE_LIMIT, le=LORA_SCALE_LIMIT, allow_inf_nan=False,
        description=f"Strength, -{LORA_SCALE_LIMIT:g} to {LORA_SCALE_LIMIT:g} (0 = no effect; negative pushes away "
        "from the LoRA's style).",
    )

    @field_validator("ref", mode="before")
    @classmethod
    def _ref(cls, v: Any, info: ValidationInfo) -> Any:
        return validate_media_ref(v, allow_http=_allow_http(info))


class OutputSpec(BaseModel):
    model_config = _STRICT

    target: OutputTarget | None = Field(
        default=None,
        description="Where the MP4 goes: s3 (a presigned URL), volume or local (a path), inline (base64, up to "
        "8 MiB). Default: the worker's storage (local on the stock config, s3 on Runpod).",
        json_schema_extra={"default": "local"},
    )
    key_prefix: str | None = Field(
        default=None, max_length=256, description="Folder for the result's key, e.g. talks/2026/.",
        json_schema_extra={"default": "infinitetalk/"},
    )
    presign_expiry_s: int | None = Field(
        default=None, ge=60, le=7 * 24 * 3600, description="Lifetime of an s3 result's URL in seconds (60 to 604800).",
        json_schema_extra={"default": 86400},
    )

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(r"[A-Za-z0-9!_.*'()/\-]*", v):
            raise ValueError("key_prefix may hold letters, digits and !_.*'()/- only")
        if v.startswith("/") or any(p in ("..", ".") for p in v.split("/")):
            raise ValueError("key_prefix must be relative and must not contain '.' or '..' segments")
        return v


def _bbox_check(v: list[float]) -> list[float]:
    x0, y0, x1, y1 = v
    if min(v) < 0:
        raise ValueError("bbox coordinates must be >= 0 (source pixels)")
    if not (x0 < x1 and y0 < y1):
        raise ValueError("bbox must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
    return v


# Coordinates are finite: the JSON tokens Infinity/NaN parse to floats, and int(inf) fails deep in the engine.
Coord = Annotated[float, Field(allow_inf_nan=False)]
BBox = Annotated[list[Coord], Field(min_length=4, max_length=4), AfterValidator(_bbox_check)]


def _polygon_check(v: list[list[float]]) -> list[list[float]]:
    """At least three [x, y] points (source pixels, >= 0) enclosing some area; the worker checks they lie
    inside the image once it has it."""
    if any(c < 0 or c != c or c == float("inf") for p in v for c in p):
        raise ValueError("mask points must be finite [x, y] source pixels >= 0")
    area2 = sum(v[i][0] * v[(i + 1) % len(v)][1] - v[(i + 1) % len(v)][0] * v[i][1] for i in range(len(v)))
    if abs(area2) < 2.0:  # under one square pixel: points on one line or repeated
        raise ValueError("mask polygon encloses no area (its points are repeated or on one line)")
    return v


Point = Annotated[list[Coord], Field(min_length=2, max_length=2)]
Polygon = Annotated[list[Point], Field(min_length=3, max_length=256), AfterValidator(_polygon_check)]
# A mask is a polygon or an image ref (a string: checked as a media ref by JobInput._mask_refs); the
# discriminator picks the form so that an error speaks of the one the job used, not of both.
Mask = Annotated[
    Union[Annotated[Polygon, Tag("[polygon]")], Annotated[str, Tag("[image]")]],
    Discriminator(lambda v: "[image]" if isinstance(v, str) else "[polygon]" if isinstance(v, list) else None,
                  custom_error_type="mask_form",
                  custom_error_message="must be a polygon [[x, y], …] or an image ref (URL, data: URI, s3:// or path)"),
]


# ---------------------------------------------------------------------------------------
# The job input


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


class JobInput(BaseModel):
    """One job's input. Defaults of None mean "the worker's configured default"."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        str_strip_whitespace=True,
        strict=True,  # see _STRICT
        json_schema_extra={"title": "InfiniteTalk job input"},
    )

    # media
    # Defaults shown in the JSON schema (json_schema_extra) are the stock worker's; None in Python means
    # "the worker's configured default" (conf/config.yaml, the chosen sampler preset, DEFAULT_* variables).
    image: str | None = Field(
        default=None, validation_alias=_alias("image", "cond_image"),
        description="The portrait to animate: an https:// URL, a data: URI (base64), s3://bucket/key or a path on the worker's volume. Give image or video.",
    )
    video: str | None = Field(
        default=None, validation_alias=_alias("video", "cond_video"),
        description="A reference video to dub instead of an image: an https:// URL, a data: URI (base64), s3://bucket/key or a path on the worker's volume.",
    )
    audio: SpeakerAudio | None = Field(
        default=None,
        validation_alias=_alias("audio", "cond_audio"),
        description="The speech that drives the video: one ref (an https:// URL, a data: URI (base64), s3://bucket/key or a path on the worker's volume), or {\"person1\": ref, \"person2\": ref} "
        "for two speakers. Give audio or tts.",
    )
    audio_type: AudioType | None = Field(
        default=None,
        description="Two speakers only: add = one after the other, para = together. Required then.",
    )
    tts: TtsSpec | None = Field(
        default=None, validation_alias=_alias("tts", "tts_audio"),
        description='Text to speech instead of audio: {"text": ..., "voice": "af_heart", "voice2": "am_michael"}.',
    )

    # prompt and layout
    prompt: Text = Field(default="", max_length=4000, description="What the video shows, in words (up to 4000 characters).")
    prompts: list[ScenePrompt] | None = Field(
        default=None, max_length=MAX_SCENE_PROMPTS,
        description=f'Per-scene prompts, [{{"from_s": 0, "text": "…"}}, …] with from_s strictly increasing (up to '
        f"{MAX_SCENE_PROMPTS}); each applies to the chunks that start in its span, and prompt covers the start when "
        "the first from_s is above 0. Default: prompt throughout.",
    )
    negative_prompt: Text | None = Field(
        default=None, max_length=4000, validation_alias=_alias("negative_prompt", "n_prompt", "neg_prompt"),
        description="What to avoid; default: the negative prompt InfiniteTalk ships with.",
        json_schema_extra={"default": DEFAULT_NEGATIVE_PROMPT},
    )
    bbox: dict[Person, BBox] | None = Field(
        default=None,
        description='Where each speaker is, {"person1": [x0, y0, x1, y1], "person2": [...]} in source pixels; '
        "default: the left and right halves.",
    )
    mask: Mask | None = Field(
        default=None,
        description="Where the video may move: a polygon [[x, y], …] of 3 to 256 points in source pixels, inside the "
        "image, or a mask image (a ref like image's: grayscale, or with transparency; any size of the picture's "
        "aspect, stretched to it; pixels at least 50% white, or 50% opaque where it has transparency, may move). "
        "Outside it every frame stays the reference frame (a latent blend, like inpainting). Default: no mask, the "
        "whole frame may move.",
    )
    masks: dict[Person, Mask] | None = Field(
        default=None,
        description='Where each of two speakers is, as polygons {"person1": [[x, y], …], "person2": […]} in source '
        "pixels or mask images (the same rules as mask): an alternative to bbox for shapes a box does not fit, so "
        "bystanders stay still. Not together with bbox. Default: bbox, else the left and right halves.",
    )

    loras: list[LoraSpec] | None = Field(
        default=None, max_length=MAX_LORAS,
        description=f'Your own LoRAs for this job, [{{"ref": "…", "scale": 1.0}}, …] (up to {MAX_LORAS}): merged into '
        "the video model on top of the preset's LoRA and removed after the job. A file whose keys or shapes do not fit "
        "the model is refused naming the key. Default: none.",
        json_schema_extra={"default": []},
    )

    # generation
    size: Size | None = Field(
        default=None, description="Output bucket: infinitetalk-480 or infinitetalk-720 (capped by the GPU tier; DEFAULT_SIZE).",
        json_schema_extra={"default": "infinitetalk-480"},
    )
    aspect: Aspect | None = Field(
        default=None,
        description="Output framing, width:height (16:9, 9:16, 1:1 or 4:5), the largest multiple-of-16 frame within "
        "the size's pixel budget; the input is scaled and centre-cropped to it. Default: the size's bucket nearest "
        "the input's own aspect.",
    )
    width: int | None = Field(
        default=None, gt=0, le=MAX_SIDE,
        description=f"Output width in pixels, a multiple of 16 up to {MAX_SIDE}, given with height; width*height at "
        "most the size's pixel budget (640*640 for infinitetalk-480, 960*960 for infinitetalk-720) and height/width "
        f"from {MIN_FRAME_RATIO:.4g} to {MAX_FRAME_RATIO:g} (the model's own buckets). Default: from the bucket.",
    )
    height: int | None = Field(
        default=None, gt=0, le=MAX_SIDE,
        description=f"Output height in pixels, a multiple of 16 up to {MAX_SIDE}, given with width (see width). "
        "Default: from the bucket.",
    )
    mode: Mode | None = Field(
        default=None,
        description="streaming renders the whole audio chunk by chunk (one chunk when it fits one); clip renders "
        "one chunk of frame_num frames and cuts the rest (the result then says truncated).",
        json_schema_extra={"default": "streaming"},
    )
    sampler: SamplerPreset | None = Field(
        default=None, validation_alias=_alias("sampler", "preset"),
        description="Preset: fast (8 steps, distill LoRA; the default), turbo (4 steps x 2 passes), lightning (4 steps, one pass: no guidance, cheapest), quality "
        "(40 steps x 3 guidance passes, ~12x fast's GPU time).",
        json_schema_extra={"default": "fast"},
    )
    sample_steps: int | None = Field(
        default=None, ge=1, le=100,
        description="Denoising steps per chunk, a whole number from 1 to 100; default: the preset's (fast 8, "
        "turbo 4, quality 40) or DEFAULT_SAMPLE_STEPS.",
        json_schema_extra={"default": 8},
    )
    sample_shift: float | None = Field(
        default=None, ge=0.5, le=20,
        description="Noise schedule shift, 0.5 to 20; default: the preset's (fast and turbo 2; quality 7 at 480p, 11 at 720p).",
        json_schema_extra={"default": 2.0},
    )
    text_guide_scale: float | None = Field(
        default=None, ge=0, le=20, validation_alias=_alias("text_guide_scale", "sample_text_guide_scale"),
        description="Text guidance, 0 to 20 (1 turns the text pass off); default: the preset's (fast 1, quality 5).",
        json_schema_extra={"default": 1.0},
    )
    audio_guide_scale: float | None = Field(
        default=None, ge=0, le=20, validation_alias=_alias("audio_guide_scale", "sample_audio_guide_scale"),
        description="Audio guidance, 0 to 20; default: the preset's (fast 2, quality 4).",
        json_schema_extra={"default": 2.0},
    )
    use_apg: bool | None = Field(
        default=None, description="Adaptive projected guidance, true or false (ENABLE_APG).",
        json_schema_extra={"default": False},
    )
    use_teacache: bool | None = Field(
        default=None, description="Skip DiT steps whose input barely changed, true or false (ENABLE_TECACHE).",
        json_schema_extra={"default": False},
    )
    teacache_thresh: float | None = Field(
        default=None, gt=0, le=1, description="TeaCache's skip threshold, more than 0 and at most 1.",
        json_schema_extra={"default": 0.2},
    )
    guidance_every: int | None = Field(
        default=None, ge=1, le=10,
        description="Run the guidance passes on every k-th step only, reusing their correction between "
        "(1 to 10; 1 = every step).",
        json_schema_extra={"default": 1},
    )
    silence_handling: bool | None = Field(
        default=None,
        description="Let the face rest in pauses, true or false: frames in a run of at least silence_min_s seconds "
        "below silence_threshold_db get the audio embedding of true silence, and each chunk's audio guidance moves "
        "toward silence_audio_guide_scale by its share of silent frames (all speakers silent).",
        json_schema_extra={"default": False},
    )
    silence_threshold_db: float | None = Field(
        default=None, ge=-120, le=0,
        description="Level below which a 40 ms frame counts as silent, in dBFS (RMS; 0 = full scale), -120 to 0; "
        "used with silence_handling.",
        json_schema_extra={"default": -45.0},
    )
    silence_min_s: float | None = Field(
        default=None, ge=0.04, le=10,
        description="Shortest pause that counts as silence, in seconds (0.04 to 10; shorter dips are gaps between "
        "words); used with silence_handling.",
        json_schema_extra={"default": 0.3},
    )
    silence_audio_guide_scale: float | None = Field(
        default=None, ge=0, le=20,
        description="Audio guidance of a fully silent chunk, 0 to 20 (1 = no audio guidance); used with "
        "silence_handling.",
        json_schema_extra={"default": 1.0},
    )
    trim_trailing_silence: bool | None = Field(
        default=None,
        description=f"End the video when the speech ends, true or false: the silence after the last words (silent "
        f"by silence_threshold_db and silence_min_s, every speaker) is cut from the video and its soundtrack alike, "
        f"keeping {TRIM_TAIL_S:g} s of it. It applies after the mode/max_duration_s cut (which stays truncated_s); "
        "the result's trimmed_s says how much it removed.",
        json_schema_extra={"default": False},
    )
    dub_strength: float | None = Field(
        default=None, gt=0, le=1,
        description="With a video: how much of the reference video's motion to re-render, more than 0 and at most 1. "
        "Below 1 each chunk starts from the video's own latents noised part way and runs that share of the steps "
        "(0.6 keeps more of its gestures); 1 samples from noise, conditioned on one frame per chunk.",
        json_schema_extra={"default": 1.0},
    )
    audio_isolation: bool | None = Field(
        default=None,
        description="Separate the speech from music and noise before the audio encoder, true or false: each "
        "speaker's file goes through a source-separation model (Demucs v4 htdemucs, its vocals stem, at 44.1 kHz) "
        "and the isolated voice drives the lips. Needs audio (tts speech is clean already) and isolation weights "
        "on the worker (model.isolation_path).",
        json_schema_extra={"default": False},
    )
    audio_mux: AudioMux | None = Field(
        default=None,
        description="The soundtrack of the MP4: original (the uploaded audio as sent, music included) or voice "
        "(the isolated speech; needs audio_isolation).",
        json_schema_extra={"default": "original"},
    )
    frame_num: int | None = Field(
        default=None, ge=5, le=201, description="Frames per chunk, 4n+1 from 5 to 201 (81 = 3.24 s at 25 fps).",
        json_schema_extra={"default": 81},
    )
    motion_frame: int | None = Field(
        default=None, ge=1, le=200, description="Frames carried from one chunk to the next, 4n+1 and below frame_num.",
        json_schema_extra={"default": 9},
    )
    max_duration_s: float | None = Field(
        default=None, ge=0.5, le=1800, validation_alias=_alias("max_duration_s", "max_duration"),
        description="Longest video in seconds, 0.5 to 1800; longer audio is cut (the result says truncated).",
        json_schema_extra={"default": 1800.0},
    )
    color_correction_strength: float | None = Field(
        default=None, ge=0, le=1, description="How strongly each chunk's colours are pulled to the image's, 0 to 1.",
        json_schema_extra={"default": 1.0},
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, validation_alias=_alias("seed", "base_seed"),
        description="Random seed, 0 to 4294967295; default: a new one per job (the result reports it).",
    )

    output: OutputSpec | None = Field(
        default=None, description='Where the result goes: {"target", "key_prefix", "presign_expiry_s"}.'
    )
    preview: bool | None = Field(
        default=None,
        description="Watch while it renders: each finished chunk becomes an HLS segment next to a growing "
        "playlist on the result's storage (progress and result name it); false turns it off. Default: on in "
        "streaming mode; not available with output inline.",
        json_schema_extra={"default": True},
    )
    webhook_url: str | None = Field(
        default=None, max_length=2048,
        description="An http(s) address the worker posts webhook_events to (Runpod's own `webhook`, beside "
        "`input`, still gets the final status). Private and loopback addresses are refused.",
    )
    webhook_events: list[Literal["segment", "done"]] | None = Field(
        default=None, max_length=2,
        description='Which events the worker posts to webhook_url: "segment" (each preview segment as it is '
        'stored) and "done" (the result or the error, with the partial video if any).',
        json_schema_extra={"default": []},
    )

    # -- field checks -------------------------------------------------------------------

    @field_validator("image", "video", mode="before")
    @classmethod
    def _media(cls, v: Any, info: ValidationInfo) -> Any:
        return v if v is None else validate_media_ref(v, allow_http=_allow_http(info))

    @field_validator("mask", "masks", mode="before")
    @classmethod
    def _mask_refs(cls, v: Any, info: ValidationInfo) -> Any:
        # A mask image is a media ref with image's rules; polygons are checked by the Mask type.
        def ref(m: Any, field: str) -> Any:
            if not isinstance(m, str):
                return m
            try:
                return validate_media_ref(m, allow_http=_allow_http(info))
            except ValueError as exc:
                raise InputProblem(field, str(exc), hint=f"Give {field} as a polygon [[x, y], …] or a mask image: "
                                   "an https:// URL, a data: URI, s3://bucket/key or a volume path.") from None

        if info.field_name == "masks" and isinstance(v, Mapping):
            return {k: ref(m, f"masks.{k}") for k, m in v.items()}
        return ref(v, "mask")

    @field_validator("audio", mode="before")
    @classmethod
    def _audio_shape(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"person1": v}
        return v

    @field_validator("frame_num")
    @classmethod
    def _frame_num(cls, v: int | None) -> int | None:
        if v is not None and (v - 1) % 4 != 0:
            raise ValueError(f"frame_num must be 4n+1 (5, 9, …, 81, …, 201), got {v}")
        return v

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v % 16 != 0:
            near = sorted({max(16, v // 16 * 16), v // 16 * 16 + 16})
            raise InputProblem(info.field_name, f"{info.field_name} must be a multiple of 16, got {v}",
                               hint=f"Set {info.field_name} to {' or '.join(map(str, near))}.")
        return v

    @field_validator("motion_frame")
    @classmethod
    def _motion_frame(cls, v: int | None) -> int | None:
        if v is not None and (v - 1) % 4 != 0:
            raise ValueError(f"motion_frame must be 4n+1 (1, 5, 9, …), got {v}")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _no_null(cls, v: Any, info: ValidationInfo) -> Any:
        # A field left out takes the worker's default; an explicit null is refused rather than read
        # as that default (`sampler: null` silently meaning quality hid mistakes in callers' code).
        if v is None:
            raise ValueError(f"{info.field_name} is null: leave the field out to use the worker's default")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_duplicate_aliases(cls, data: Any) -> Any:
        # {"image": ..., "cond_image": ...} would otherwise silently keep one of them.
        if isinstance(data, Mapping):
            for name, field in cls.model_fields.items():
                alias = field.validation_alias
                if isinstance(alias, AliasChoices):
                    present = [a for a in alias.choices if isinstance(a, str) and a in data]
                    if len(present) > 1:
                        raise InputProblem(
                            name, f"give only one of {', '.join(present)} (they are the same field, {name})",
                            hint=f"Keep one of {', '.join(present)}, the names of {name}.",
                        )
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> "JobInput":
        if self.image is None and self.video is None:
            raise InputProblem("image", "the job has no picture: give image (a portrait) or video",
                               hint="Add image: a portrait as an https:// URL, a data: URI, s3://bucket/key or a volume path.")
        if self.dub_strength is not None and self.video is None:
            raise InputProblem("dub_strength", "dub_strength needs a video input (it keeps the video's motion)",
                               hint="Give video instead of image, or leave dub_strength out.")
        if self.audio_isolation and self.tts is not None:
            raise InputProblem("audio_isolation", "audio_isolation works on uploaded audio; tts speech has no music "
                               "to remove", hint="Leave audio_isolation out for tts jobs, or send the recording in audio.")
        if self.audio_mux == "voice" and not self.audio_isolation:
            raise InputProblem("audio_mux", "audio_mux voice needs audio_isolation: true (there is no isolated voice "
                               "without it)", hint="Add audio_isolation: true, or leave audio_mux out.")
        if self.image is not None and self.video is not None:
            raise InputProblem("video", "image and video are both given; a job animates one of them",
                               hint="Keep image or video, not both.")
        if self.audio is None and self.tts is None:
            raise InputProblem("audio", "the job has no speech: give audio (a recording) or tts (text to speak)",
                               hint="Add audio: a speech file as an https:// URL, a data: URI, s3://bucket/key or a "
                               "volume path; or tts: {\"text\": \"…\"}.")
        if self.audio is not None and self.tts is not None:
            raise InputProblem("tts", "audio and tts are both given; the speech comes from one of them",
                               hint="Keep audio (a recording) or tts (text to speak), not both.")
        if (self.width is None) != (self.height is None):
            missing = "height" if self.height is None else "width"
            raise InputProblem(missing, "width and height go together: give both or neither",
                               hint=f"Add {missing}, or use aspect for a preset framing.")
        if self.width is not None and self.height is not None:
            _check_frame_ratio(self.width, self.height)
        if self.aspect is not None and self.width is not None and self.height is not None:
            aw, ah = (int(p) for p in self.aspect.split(":"))
            if self.width * ah != self.height * aw:
                raise InputProblem("aspect", f"aspect {self.aspect} does not match width {self.width} x height "
                                   f"{self.height}", hint="Give aspect or width/height, not both.")
        starts = [p.from_s for p in self.prompts or ()]
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise InputProblem("prompts", "prompts must be in order of from_s, each starting after the one before",
                               hint="Sort prompts by from_s and give each start once.")
        speakers = self.speakers
        if speakers == 2 and self.audio is not None and self.audio_type is None:
            raise InputProblem("audio_type", "two speakers need audio_type",
                               hint="Set audio_type to add (one after the other) or para (both at once).")
        if self.bbox:
            if speakers < 2 and "person2" in self.bbox:
                raise InputProblem("bbox.person2", "bbox.person2 is given but there is only one speaker",
                                   hint="Remove bbox.person2, or add audio.person2 for a second speaker.")
        if self.masks is not None:
            if self.bbox:
                raise InputProblem("masks", "bbox and masks are both given; each says where the speakers are",
                                   hint="Keep bbox (boxes) or masks (polygons or mask images), not both.")
            if speakers < 2 or set(self.masks) != {"person1", "person2"}:
                raise InputProblem("masks", "masks needs two speakers and a polygon or mask image for each of person1 and person2",
                                   hint="Give masks.person1 and masks.person2 with audio.person1 and audio.person2.")
        if self.frame_num is not None and self.motion_frame is not None and self.motion_frame >= self.frame_num:
            raise InputProblem("motion_frame", f"motion_frame ({self.motion_frame}) must be smaller than frame_num ({self.frame_num})",
                               hint="Use a motion_frame below frame_num, e.g. 9 with frame_num 81.")
        if self.webhook_events and not self.webhook_url:
            raise InputProblem("webhook_url", "webhook_events is given but webhook_url is not: the worker has nowhere to post",
                               hint="Add webhook_url (an https:// address), or leave webhook_events out.")
        if self.webhook_url is not None:
            # The same form rules as media URLs (a host DNS can encode, no NUL or spaces, no user:pass@ that
            # logs would keep); whether the host is public is decided when the job starts (worker.preview).
            problem = None if re.match(r"^https?://", self.webhook_url, re.I) else "must be an http:// or https:// address"
            if problem is None:
                try:
                    _check_url(self.webhook_url)
                except ValueError as exc:
                    problem = str(exc)
            if problem:
                raise InputProblem("webhook_url", problem, hint="Give webhook_url as https://host/path.")
        return self

    # -- derived ------------------------------------------------------------------------

    @property
    def speakers(self) -> int:
        if self.audio is not None:
            return self.audio.speakers
        if self.tts is not None:
            return self.tts.speakers
        return 1

    @property
    def effective_audio_type(self) -> AudioType | None:
        """audio_type only means something with two speakers; TTS dialogue is sequential."""
        if self.speakers < 2:
            return None
        return self.audio_type or "add"

    def media_refs(self) -> dict[str, str]:
        """Every media ref in the job by its field path (what the download stage fetches)."""
        refs: dict[str, str] = {}
        if self.image:
            refs["image"] = self.image
        if self.video:
            refs["video"] = self.video
        if self.audio:
            refs["audio.person1"] = self.audio.person1
            if self.audio.person2:
                refs["audio.person2"] = self.audio.person2
        if isinstance(self.mask, str):
            refs["mask"] = self.mask
        for person, m in (self.masks or {}).items():
            if isinstance(m, str):
                refs[f"masks.{person}"] = m
        return refs

    def log_summary(self) -> dict[str, Any]:
        """A log-safe view: refs previewed (no data: payloads, no URL query strings)."""
        data = self.model_dump(exclude_none=True, exclude={"image", "video", "audio", "tts", "loras"})
        for k, v in self.media_refs().items():
            data[k] = safe_preview(v)
        if "masks" in data:  # a mask image's ref previewed like the other refs (media_refs names it masks.<person>)
            data["masks"] = {p: safe_preview(m) if isinstance(m, str) else m for p, m in data["masks"].items()}
        if self.loras:
            data["loras"] = [{"ref": safe_preview(lo.ref), "scale": lo.scale} for lo in self.loras]
        if self.tts:
            data["tts"] = {"chars": len(self.tts.text), "speakers": self.tts.speakers}
        if self.webhook_url:  # its query may hold the receiver's token
            data["webhook_url"] = safe_preview(self.webhook_url)
        return data


def parse_job_input(payload: Any, *, allow_http: bool = False) -> JobInput:
    """Validate a job's `input`; failures become one E_INPUT_VALIDATION JobError."""
    if not isinstance(payload, Mapping):
        from contract.errors import ErrorCode

        raise JobError(ErrorCode.E_INPUT_VALIDATION, "job input must be a JSON object")
    try:
        return JobInput.model_validate(payload, context={"allow_http": allow_http})
    except ValidationError as exc:
        raise error_from_pydantic(exc, field_help=field_help(), known_fields=known_field_names()) from None


def _model_help(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for name, f in model.model_fields.items():
        if f.description:
            names = [name]
            if isinstance(f.validation_alias, AliasChoices):  # errors name the spelling the job used
                names += [a for a in f.validation_alias.choices if isinstance(a, str)]
            for n in names:
                out[prefix + n] = f.description
    return out


def field_help() -> dict[str, str]:
    """{field path: its description}: the hint of an error names the field and says what it takes."""
    return {
        **_model_help(JobInput), **_model_help(SpeakerAudio, "audio."), **_model_help(TtsSpec, "tts."),
        **_model_help(OutputSpec, "output."), **_model_help(LoraSpec, "loras."),
    }


def known_field_names() -> tuple[str, ...]:
    """Every name a job may use at the top level (canonical and aliases), for "did you mean" hints."""
    names: list[str] = []
    for name, f in JobInput.model_fields.items():
        names.append(name)
        if isinstance(f.validation_alias, AliasChoices):
            names += [a for a in f.validation_alias.choices if isinstance(a, str)]
    for model in (SpeakerAudio, TtsSpec, OutputSpec, LoraSpec):
        names += list(model.model_fields)
    return tuple(dict.fromkeys(names))


def job_input_json_schema() -> dict[str, Any]:
    """The input's JSON schema (validation aliases are listed as the accepted names); defaults shown
    are the stock worker's (conf/config.yaml), not pydantic's None; a field without a default (the
    media, the seed) shows none rather than null."""
    schema = JobInput.model_json_schema(by_alias=True, mode="validation")
    for props in [schema["properties"], *(d.get("properties", {}) for d in schema.get("$defs", {}).values())]:
        for prop in props.values():
            if "default" in prop and prop["default"] is None:
                del prop["default"]
    return schema


# ---------------------------------------------------------------------------------------
# The job output


class JobOutput(BaseModel):
    """What a successful job returns. Exactly one of video_url / video_path / video_base64."""

    model_config = ConfigDict(extra="forbid")

    video_url: str | None = None
    video_path: str | None = None
    video_base64: str | None = None
    storage: OutputTarget
    bucket: str | None = None
    key: str | None = None
    url_expires_at: str | None = None
    duration_s: float = Field(ge=0)
    num_frames: int = Field(ge=0)
    fps: float = Field(gt=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    seed: int = Field(ge=0, le=MAX_SEED)
    truncated: bool = Field(
        default=False, description="True when the video covers less than the audio (clip mode, max_duration_s)."
    )
    truncated_s: float = Field(default=0.0, ge=0, description=(
        "Seconds of audio left out of the video (text to speech: estimated for the words past the video's end, "
        "which are not synthesised)."))
    trimmed_s: float = Field(
        default=0.0, ge=0, description="Seconds of trailing silence cut by trim_trailing_silence (after any "
        "truncation; the video and its soundtrack both lose them)."
    )
    config: dict[str, Any] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    preview_url: str | None = Field(
        default=None, description="The preview's HLS playlist (s3), for players that want the stream."
    )
    preview: dict[str, Any] | None = Field(
        default=None, description="The preview: playlist_url or playlist_path, segments, seconds, ended; or "
        "available false with the reason."
    )

    @model_validator(mode="after")
    def _one_location(self) -> "JobOutput":
        given = [n for n in ("video_url", "video_path", "video_base64") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("exactly one of video_url, video_path or video_base64 must be set")
        return self
