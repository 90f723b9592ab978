"""The job contract: what goes in `{"input": {...}}` and what comes back.

Field names follow ARCHITECTURE.md section 3; the seed guide's and upstream InfiniteTalk's
names are accepted as aliases (`cond_image`, `cond_video`, `cond_audio`, `tts_audio`,
`sample_text_guide_scale`, `sample_audio_guide_scale`, `base_seed`, `max_duration`, ...),
so payloads written for the seed keep working. Unknown top-level keys are refused so that
typos are reported instead of silently ignored.

The JSON schema for clients is `JobInput.model_json_schema()` (or `job_input_json_schema()`;
`python -m worker.schema` prints it). It lists canonical names; the aliases are accepted too.

Only shape and bounds are checked here. Whether a path lies under an allowed root, whether
a host is private, and whether a value fits the worker's GPU tier are decided later
(download stage, `worker.config.apply_job_overrides`).
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Mapping

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.errors import JobError, error_from_pydantic, safe_preview

__all__ = [
    "MediaRefKind",
    "media_ref_kind",
    "validate_media_ref",
    "SpeakerAudio",
    "TtsSpec",
    "OutputSpec",
    "JobInput",
    "JobOutput",
    "parse_job_input",
    "job_input_json_schema",
    "SIZES",
    "MODES",
    "SAMPLER_PRESETS",
    "MAX_SEED",
]

SIZES = ("infinitetalk-480", "infinitetalk-720")
MODES = ("clip", "streaming")
SAMPLER_PRESETS = ("quality", "fast", "turbo", "lightning")
OUTPUT_TARGETS = ("s3", "volume", "local", "inline")
MAX_SEED = 2**32 - 1

Size = Literal["infinitetalk-480", "infinitetalk-720"]
Mode = Literal["clip", "streaming"]
SamplerPreset = Literal["quality", "fast", "turbo", "lightning"]
OutputTarget = Literal["s3", "volume", "local", "inline"]
AudioType = Literal["add", "para"]
Person = Literal["person1", "person2"]

# ---------------------------------------------------------------------------------------
# Media references

MediaRefKind = Literal["https", "http", "data", "s3", "path"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_S3 = re.compile(r"^s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(.+)$")
_DATA = re.compile(r"^data:([\w.+\-]+/[\w.+\-]+)?((?:;[\w.+\-]+=[\w.+\-]+)*);base64,", re.I)
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-\s]*$")
MAX_REF_CHARS = 4096  # URLs and paths; data: URIs are bounded by Runpod's payload cap instead


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
        if not _S3.match(ref):
            raise ValueError("s3 refs must look like s3://bucket/key")
        return ref
    if scheme is not None:
        raise ValueError(
            f"unsupported scheme {scheme}:// ; use an https:// URL, a data: URI, s3://bucket/key "
            "or a path on the worker's volume"
        )
    return ref


def _check_url(ref: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(ref)
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        raise ValueError(f"malformed URL: {exc}") from None
    if not parts.hostname:
        raise ValueError("URL has no host")
    from worker.inputs.urlform import url_problem

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

# strict: the contract is JSON's types, not Python's coercions (`true` is not a step count, "42" is
# not a seed, "yes" is not a boolean, 2.0 is not an integer); floats still take JSON integers.
_STRICT = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True, strict=True)



class SpeakerAudio(BaseModel):
    """Audio per speaker. A bare ref in `audio` is read as `{"person1": ref}`."""

    model_config = _STRICT

    person1: str
    person2: str | None = None

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

    text: str = Field(min_length=1, max_length=10_000)
    voice: str | None = Field(
        default=None, max_length=4096, validation_alias=AliasChoices("voice", "human1_voice", "voice1")
    )
    voice2: str | None = Field(default=None, max_length=4096, validation_alias=AliasChoices("voice2", "human2_voice"))

    @property
    def speakers(self) -> int:
        return 2 if _TTS_S2.search(self.text) else 1

    @model_validator(mode="after")
    def _voices(self) -> "TtsSpec":
        if self.voice2 and self.speakers < 2:
            raise ValueError("voice2 needs a second speaker marked (s2) in the text")
        return self


class OutputSpec(BaseModel):
    model_config = _STRICT

    target: OutputTarget | None = None
    key_prefix: str | None = Field(default=None, max_length=256)
    presign_expiry_s: int | None = Field(default=None, ge=60, le=7 * 24 * 3600)

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


BBox = Annotated[list[float], Field(min_length=4, max_length=4), AfterValidator(_bbox_check)]


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
    image: str | None = Field(default=None, validation_alias=_alias("image", "cond_image"))
    video: str | None = Field(default=None, validation_alias=_alias("video", "cond_video"))
    audio: SpeakerAudio | None = Field(
        default=None,
        validation_alias=_alias("audio", "cond_audio"),
        description='One ref, or {"person1": ref, "person2": ref} for two speakers.',
    )
    audio_type: AudioType | None = Field(
        default=None,
        description="Two speakers only: add = one after the other, para = together. Required then.",
    )
    tts: TtsSpec | None = Field(default=None, validation_alias=_alias("tts", "tts_audio"))

    # prompt and layout
    prompt: str = Field(default="", max_length=4000)
    negative_prompt: str | None = Field(
        default=None, max_length=4000, validation_alias=_alias("negative_prompt", "n_prompt", "neg_prompt")
    )
    bbox: dict[Person, BBox] | None = Field(
        default=None, description="Per speaker [x0, y0, x1, y1] in source pixels."
    )

    # generation
    size: Size | None = None
    mode: Mode | None = None
    sampler: SamplerPreset | None = Field(default=None, validation_alias=_alias("sampler", "preset"))
    sample_steps: int | None = Field(default=None, ge=1, le=100)
    sample_shift: float | None = Field(default=None, ge=0.5, le=20)
    text_guide_scale: float | None = Field(
        default=None, ge=0, le=20, validation_alias=_alias("text_guide_scale", "sample_text_guide_scale")
    )
    audio_guide_scale: float | None = Field(
        default=None, ge=0, le=20, validation_alias=_alias("audio_guide_scale", "sample_audio_guide_scale")
    )
    use_apg: bool | None = None
    use_teacache: bool | None = None
    teacache_thresh: float | None = Field(default=None, gt=0, le=1)
    guidance_every: int | None = Field(
        default=None, ge=1, le=10,
        description="Run the guidance passes on every k-th step only, reusing their correction between (1 = every step).",
    )
    frame_num: int | None = Field(default=None, ge=5, le=201, description="4n+1")
    motion_frame: int | None = Field(default=None, ge=1, le=200, description="4n+1, < frame_num")
    max_duration_s: float | None = Field(
        default=None, ge=0.5, le=1800, validation_alias=_alias("max_duration_s", "max_duration")
    )
    color_correction_strength: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, validation_alias=_alias("seed", "base_seed"))

    output: OutputSpec | None = None

    # -- field checks -------------------------------------------------------------------

    @field_validator("image", "video", mode="before")
    @classmethod
    def _media(cls, v: Any, info: ValidationInfo) -> Any:
        return v if v is None else validate_media_ref(v, allow_http=_allow_http(info))

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
            raise ValueError("frame_num must be 4n+1 (5, 9, …, 81, …, 201)")
        return v

    @field_validator("motion_frame")
    @classmethod
    def _motion_frame(cls, v: int | None) -> int | None:
        if v is not None and (v - 1) % 4 != 0:
            raise ValueError("motion_frame must be 4n+1 (1, 5, 9, …)")
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
                        raise ValueError(f"give only one of {', '.join(present)} (they are the same field)")
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> "JobInput":
        if (self.image is None) == (self.video is None):
            raise ValueError("give exactly one of image (cond_image) or video (cond_video)")
        if (self.audio is None) == (self.tts is None):
            raise ValueError("give exactly one of audio (cond_audio) or tts (tts_audio)")
        speakers = self.speakers
        if speakers == 2 and self.audio is not None and self.audio_type is None:
            raise ValueError("audio_type (add or para) is required with two speakers")
        if self.bbox:
            if speakers < 2 and "person2" in self.bbox:
                raise ValueError("bbox.person2 given but there is only one speaker")
        if self.frame_num is not None and self.motion_frame is not None and self.motion_frame >= self.frame_num:
            raise ValueError("motion_frame must be smaller than frame_num")
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
        return refs

    def log_summary(self) -> dict[str, Any]:
        """A log-safe view: refs previewed (no data: payloads, no URL query strings)."""
        data = self.model_dump(exclude_none=True, exclude={"image", "video", "audio", "tts"})
        for k, v in self.media_refs().items():
            data[k] = safe_preview(v)
        if self.tts:
            data["tts"] = {"chars": len(self.tts.text), "speakers": self.tts.speakers}
        return data


def parse_job_input(payload: Any, *, allow_http: bool = False) -> JobInput:
    """Validate a job's `input`; failures become one E_INPUT_VALIDATION JobError."""
    if not isinstance(payload, Mapping):
        from worker.errors import ErrorCode

        raise JobError(ErrorCode.E_INPUT_VALIDATION, "job input must be a JSON object")
    try:
        return JobInput.model_validate(payload, context={"allow_http": allow_http})
    except ValidationError as exc:
        raise error_from_pydantic(exc) from None


def job_input_json_schema() -> dict[str, Any]:
    """The input's JSON schema (validation aliases are listed as the accepted names)."""
    return JobInput.model_json_schema(by_alias=True, mode="validation")


# ---------------------------------------------------------------------------------------
# The job output


class JobOutput(BaseModel):
    """What a successful job returns. Exactly one of video_url / video_path / video_base64."""

    model_config = ConfigDict(extra="forbid")

    video_url: str | None = None
    video_path: str | None = None
    video_base64: str | None = None
    storage: Literal["s3", "volume", "local", "inline"]
    bucket: str | None = None
    key: str | None = None
    url_expires_at: str | None = None
    duration_s: float = Field(ge=0)
    num_frames: int = Field(ge=0)
    fps: float = Field(gt=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    seed: int = Field(ge=0, le=MAX_SEED)
    config: dict[str, Any] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_location(self) -> "JobOutput":
        given = [n for n in ("video_url", "video_path", "video_base64") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("exactly one of video_url, video_path or video_base64 must be set")
        return self


if __name__ == "__main__":  # `python -m worker.schema` prints the input schema for clients
    import json as _json

    print(_json.dumps(job_input_json_schema(), indent=2))
