"""Typed configuration: the Hydra tree under conf/, composed once at worker start.

Three entry points:

* `compose_config(overrides, env)` -> `AppConfig`, a frozen, fully resolved view of the tree.
  Group options come from overrides (`sampler=turbo`) or from the environment
  (`INFINITETALK_MODEL`, `INFINITETALK_GPU`, `INFINITETALK_SAMPLER`, `INFINITETALK_STORAGE`,
  `INFINITETALK_DEPLOY`); further operator overrides may come as a JSON list in
  `INFINITETALK_OVERRIDES` (and `INFINITETALK_SECRET_OVERRIDES`). Explicit overrides win.
* `apply_job_overrides(cfg, job)` -> `ResolvedJobConfig`: per-job settings built only from
  validated `JobInput` fields; user input never becomes an override string.
* `template_env(cfg)` -> `TemplateEnv(plain, secret)`: the env a Runpod template must carry so that
  a worker composing from that env alone gets an equal `AppConfig` (shared with infra/).

The dataclasses below are the schema (registered in Hydra's ConfigStore as `base_<group>`) and,
after `OmegaConf.to_object`, the typed view itself. They are frozen; the ConfigStore copies have
their read-only flag cleared so that Hydra can merge the yaml files into them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from contract.choices import CONF_DIR_ENV_VAR, SIZE_RANK, conf_dir
from contract.errors import ErrorCode, JobError, is_secret_name

if TYPE_CHECKING:
    from contract.job import JobInput

__all__ = [
    "HfSource",
    "ModelConf",
    "GpuConf",
    "ParallelConf",
    "SamplerConf",
    "S3Conf",
    "VolumeConf",
    "LocalConf",
    "InlineConf",
    "StorageConf",
    "DeployConf",
    "DownloadConf",
    "ServerConf",
    "JobDefaultsConf",
    "RootConf",
    "AppConfig",
    "ResolvedJobConfig",
    "TemplateEnv",
    "ConfigError",
    "GROUPS",
    "GROUP_ENV_VARS",
    "OVERRIDES_ENV_VAR",
    "SECRET_OVERRIDES_ENV_VAR",
    "CONF_DIR_ENV_VAR",
    "default_conf_dir",
    "compose_config",
    "apply_job_overrides",
    "template_env",
    "secret_values",
    "describe",
    "iter_overrides_for",
]

GROUPS = ("model", "gpu", "sampler", "storage", "deploy")
GROUP_ENV_VARS: Mapping[str, str] = {
    "model": "INFINITETALK_MODEL",
    "gpu": "INFINITETALK_GPU",
    "sampler": "INFINITETALK_SAMPLER",
    "storage": "INFINITETALK_STORAGE",
    "deploy": "INFINITETALK_DEPLOY",
}
OVERRIDES_ENV_VAR = "INFINITETALK_OVERRIDES"
SECRET_OVERRIDES_ENV_VAR = "INFINITETALK_SECRET_OVERRIDES"


class ConfigError(ValueError):
    """The configuration could not be composed (bad override, missing value, wrong type)."""


# ---------------------------------------------------------------------------------------
# Schema (and typed view)


@dataclass(frozen=True)
class HfSource:
    """Files to fetch from one Hugging Face repo (revision) into local_dir."""

    repo: str = MISSING
    local_dir: str = MISSING
    revision: Optional[str] = None
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelConf:
    name: str = MISSING
    kind: str = "infinitetalk"  # infinitetalk | tiny
    max_speakers: int = 1
    dtype: str = "bfloat16"
    quant: str = "none"  # none | fp8
    ckpt_dir: str = MISSING
    infinitetalk_file: str = MISSING
    wav2vec_dir: str = MISSING
    quant_dir: Optional[str] = None
    quant_file: Optional[str] = None
    dit_bundle: Optional[str] = None  # consolidated DiT from `weights repack` (replaces shards + adapter)
    lora_dir: Optional[str] = None
    tts_dir: Optional[str] = None  # Kokoro-82M folder (config.json, kokoro-v1_0.pth, voices/*.pt) for `tts` jobs
    weights: list[HfSource] = field(default_factory=list)


@dataclass(frozen=True)
class ParallelConf:
    """Sequence parallelism over the GPUs of one worker (worker/engine/parallel/): `ranks` processes, one per
    GPU; 1 is the single-GPU path. The endpoint must give the worker that many GPUs (gpuCount)."""

    ranks: int = 1
    method: str = "auto"  # auto | ulysses | ring (auto: Ulysses when the 40 heads divide over the ranks)
    # A collective that waits longer fails the job (a hung rank); also bounds how long a dead rank goes unseen.
    timeout_s: float = 600.0


@dataclass(frozen=True)
class GpuConf:
    name: str = MISSING
    device: str = "cuda"  # cuda | cpu
    dtype: str = "bfloat16"
    attention: str = "sdpa"  # sdpa | flash_attn | sageattention | xformers | auto (flash_attn on Hopper+ when FA3/FA4 is installed)
    offload_t5: bool = False
    offload_clip: bool = False
    offload_vae: bool = False
    # DiT blocks streamed from host memory during each forward (0: all resident).
    stream_blocks: int = 0
    # false: each guidance pass is its own DiT call (peak activations of one pass, same DiT work).
    batch_passes: bool = True
    # PYTORCH_CUDA_ALLOC_CONF for the worker process (set before torch loads unless the environment
    # already sets it), e.g. "expandable_segments:True" where fragmentation decides whether a job fits.
    cuda_alloc_conf: str = ""
    # torch.compile each DiT block (worker/engine/compile.py); the first job of each shape pays the compile.
    compile: bool = False
    max_size: str = "infinitetalk-720"
    vram_gb: int = 0
    # REST v2 `gpuTypeIds`-style pool ids for serverless endpoints (GET /v2/catalog/gpus `pool`).
    runpod_pools: list[str] = field(default_factory=list)
    # GPU type ids (the catalog's `id`), for excludedTypes and pod creation.
    runpod_gpu_type_ids: list[str] = field(default_factory=list)
    # Serverless list price per GPU-hour, for cost estimates only.
    price_per_hour_usd: float = 0.0
    parallel: ParallelConf = field(default_factory=ParallelConf)


@dataclass(frozen=True)
class SamplerConf:
    name: str = MISSING
    sample_steps: int = 40
    text_guide_scale: float = 5.0
    audio_guide_scale: float = 4.0
    shift_480: float = 7.0
    shift_720: float = 11.0
    lora_file: Optional[str] = None  # relative to model.lora_dir
    lora_scale: float = 1.0
    teacache_thresh: float = 0.2
    guidance_every: int = 1  # guidance branches on every k-th step only (1 = every step, as upstream)
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0
    color_correction_strength: float = 1.0
    frame_num: int = 81
    motion_frame: int = 9


@dataclass(frozen=True)
class S3Conf:
    endpoint: Optional[str] = None
    region: str = "us-east-1"
    access_key: Optional[str] = None
    secret_key: Optional[str] = None
    bucket: Optional[str] = None
    public_base: Optional[str] = None
    presign_expiry_s: int = 86400
    max_presign_expiry_s: int = 7 * 24 * 3600
    multipart_threshold_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class VolumeConf:
    root: str = "${server.volume_root}/outputs"


@dataclass(frozen=True)
class LocalConf:
    root: str = "outputs"


@dataclass(frozen=True)
class InlineConf:
    # Runpod caps a job's result payload; base64 adds a third.
    max_bytes: int = 5 * 1024 * 1024


@dataclass(frozen=True)
class StorageConf:
    target: str = MISSING  # s3 | volume | local | inline
    key_prefix: str = "infinitetalk/"
    # Where s3:// media refs may point, as "bucket/prefix" entries (the worker reads them with its own
    # credentials). Empty: the results bucket's "inputs/" prefix. Results may never lie under one.
    s3_inputs: list[str] = field(default_factory=list)
    s3: S3Conf = field(default_factory=S3Conf)
    volume: VolumeConf = field(default_factory=VolumeConf)
    local: LocalConf = field(default_factory=LocalConf)
    inline: InlineConf = field(default_factory=InlineConf)


@dataclass(frozen=True)
class DeployConf:
    name: str = MISSING
    endpoint_name: str = "infinitetalk"
    image: str = MISSING
    workers_min: int = 0
    workers_max: int = 3
    idle_timeout_s: int = 5
    flashboot: bool = True
    execution_timeout_s: int = 1800
    container_disk_gb: int = 40
    volume_size_gb: int = 150
    datacenter: str = "EU-RO-1"
    gpu_count: int = 1
    scaler_type: str = "QUEUE_DELAY"
    scaler_value: int = 4


@dataclass(frozen=True)
class DownloadConf:
    max_image_bytes: int = 50 * 1024 * 1024
    max_audio_bytes: int = 200 * 1024 * 1024
    max_video_bytes: int = 1024 * 1024 * 1024
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    retries: int = 3
    max_redirects: int = 5


@dataclass(frozen=True)
class ServerConf:
    work_dir: str = "/tmp/infinitetalk/work"
    volume_root: str = "/runpod-volume"
    cache_dir: str = "/tmp/infinitetalk/cache"
    allowed_roots: list[str] = field(default_factory=list)
    allow_http: bool = False
    allow_loopback_hosts: list[str] = field(default_factory=list)
    download: DownloadConf = field(default_factory=DownloadConf)
    max_image_pixels: int = 36_000_000
    max_video_frames: int = 45_000
    max_duration_s: float = 1800.0
    # The worker's own deadline per job (0: none); it fails a job with E_TIMEOUT between steps,
    # before Runpod's executionTimeout kills it with no answer.
    job_timeout_s: float = 0.0
    # Where chunk checkpoints go so a retried job (same id) resumes; shared by the endpoint's
    # workers (the network volume). Empty: no checkpoints. See worker/checkpoint.py.
    checkpoint_dir: str = ""
    # torch.compile's kernel caches (Inductor, Triton), shared by the endpoint's workers so a fresh worker
    # skips most of the per-shape compile. Empty: <volume_root>/cache/torch-compile when the volume is
    # mounted; "off": the process default (/tmp, lost with the worker). See worker/wiring.py.
    compile_cache_dir: str = ""
    # Chaos testing only (e.g. "oom@step"); empty in production.
    fault: str = ""
    log_level: str = "INFO"


@dataclass(frozen=True)
class JobDefaultsConf:
    size: str = "infinitetalk-480"
    mode: str = "streaming"
    sample_steps: Optional[int] = None
    use_teacache: bool = False
    use_apg: bool = False


@dataclass(frozen=True)
class RootConf:
    model: ModelConf = MISSING
    gpu: GpuConf = MISSING
    sampler: SamplerConf = MISSING
    storage: StorageConf = MISSING
    deploy: DeployConf = MISSING
    server: ServerConf = field(default_factory=ServerConf)
    job_defaults: JobDefaultsConf = field(default_factory=JobDefaultsConf)


@dataclass(frozen=True)
class AppConfig(RootConf):
    """The composed tree plus what composition chose.

    `choices` are the group options picked; `sampler_presets` holds every sampler option so a job
    may pick another preset by name (the chosen one is the composed, possibly overridden, `sampler`).
    """

    choices: dict[str, str] = field(default_factory=dict)
    sampler_presets: dict[str, SamplerConf] = field(default_factory=dict)

    def tree(self) -> dict[str, Any]:
        """The composed tree as plain data (no choices / presets)."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(RootConf)}


# ---------------------------------------------------------------------------------------
# ConfigStore registration


_TWINS: dict[type, type] = {}


def _twin_type(tp: Any) -> Any:
    import typing

    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _twin(tp)
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    args = tuple(_twin_type(a) for a in typing.get_args(tp))
    if origin is list:
        return list[args[0]]  # type: ignore[valid-type]
    if origin is dict:
        return dict[args[0], args[1]]  # type: ignore[valid-type]
    if origin is typing.Union or str(origin) == "types.UnionType":
        return typing.Union[args]  # type: ignore[return-value]
    return tp


def _twin(cls: type) -> type:
    """A mutable copy of a frozen schema dataclass.

    OmegaConf makes nodes of frozen dataclasses read-only, and Hydra must merge the yaml files
    into them; so the ConfigStore holds mutable twins and the frozen classes stay the single
    definition (the typed view is rebuilt from the composed values by `_build`).
    """
    import typing

    if cls in _TWINS:
        return _TWINS[cls]
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        tp = _twin_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            specs.append((f.name, tp, field(default=f.default)))
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            factory = f.default_factory  # type: ignore[misc]
            sample = factory()
            if dataclasses.is_dataclass(sample):
                specs.append((f.name, tp, field(default_factory=_twin(type(sample)))))
            else:
                specs.append((f.name, tp, field(default_factory=factory)))
        else:
            specs.append((f.name, tp))
    twin = dataclasses.make_dataclass(cls.__name__, specs, frozen=False)
    _TWINS[cls] = twin
    return twin


def _build(cls: Any, data: Any) -> Any:
    """Rebuild the frozen typed view from plain composed data."""
    import typing

    if data is None:
        return None
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _build(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data})
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if origin is list:
        return [_build(args[0], v) for v in data]
    if origin is dict:
        return {k: _build(args[1], v) for k, v in data.items()}
    if origin is typing.Union or str(origin) == "types.UnionType":
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], data) if len(inner) == 1 else data
    return data


def _schema(cls: type) -> Any:
    return _twin(cls)


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=_schema(RootConf))
    cs.store(group="model", name="base_model", node=_schema(ModelConf))
    cs.store(group="gpu", name="base_gpu", node=_schema(GpuConf))
    cs.store(group="sampler", name="base_sampler", node=_schema(SamplerConf))
    cs.store(group="storage", name="base_storage", node=_schema(StorageConf))
    cs.store(group="deploy", name="base_deploy", node=_schema(DeployConf))
    _registered = True


# ---------------------------------------------------------------------------------------
# Composition

_lock = threading.RLock()


def default_conf_dir() -> Path:
    return conf_dir()


@contextmanager
def _environment(env: Mapping[str, str] | None) -> Iterator[None]:
    """oc.env reads os.environ; to compose from a given env, os.environ *is* that env meanwhile."""
    if env is None:
        yield
        return
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _override_key(ov: str) -> str:
    return ov.split("=", 1)[0].lstrip("+~")


def _env_overrides(environ: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for group, var in GROUP_ENV_VARS.items():
        val = environ.get(var)
        if val:
            out.append(f"{group}={val}")
    for var in (OVERRIDES_ENV_VAR, SECRET_OVERRIDES_ENV_VAR):
        raw = environ.get(var)
        if not raw:
            continue
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{var} must be a JSON list of Hydra overrides: {exc}") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{var} must be a JSON list of strings")
        out.extend(items)
    return out


def _dedupe(overrides: Sequence[str]) -> list[str]:
    """Later overrides of the same key win (env first, explicit last)."""
    last: dict[str, int] = {}
    for i, ov in enumerate(overrides):
        last[_override_key(ov)] = i
    return [ov for i, ov in enumerate(overrides) if last[_override_key(ov)] == i]


@contextmanager
def _hydra(conf_dir: Path) -> Iterator[None]:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            yield
    finally:
        GlobalHydra.instance().clear()


def _compose_raw(overrides: Sequence[str], *, with_choices: bool) -> tuple[DictConfig, dict[str, str]]:
    from hydra import compose

    cfg = compose("config", overrides=list(overrides), return_hydra_config=with_choices)
    choices: dict[str, str] = {}
    if with_choices:
        rc = cfg.hydra.runtime.choices
        choices = {g: str(rc[g]) for g in GROUPS if g in rc and rc[g] is not None}
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg, choices


def _group_options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return sorted(o for o in loader.get_group_options(group) if not o.startswith("base_"))


def compose_config(
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    conf_dir: str | os.PathLike[str] | None = None,
) -> AppConfig:
    """Compose conf/ into a frozen AppConfig.

    `env`, when given, replaces os.environ for the duration (oc.env lookups and the
    INFINITETALK_* selectors read it); None means the process environment.
    """
    conf_path = Path(conf_dir).resolve() if conf_dir else default_conf_dir()
    snapshot = dict(os.environ) if env is None else {str(k): str(v) for k, v in env.items()}
    key = (str(conf_path), tuple(overrides), tuple(sorted(snapshot.items())))
    with _lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _compose_uncached(overrides, env, conf_path)
            if len(_cache) >= 64:
                _cache.pop(next(iter(_cache)))
            _cache[key] = cached
        return cached


# Composition costs Hydra ~0.7 s; template_env and tests compose the same inputs repeatedly.
_cache: dict[tuple[Any, ...], AppConfig] = {}


def _compose_uncached(overrides: Sequence[str], env: Mapping[str, str] | None, conf_path: Path) -> AppConfig:
    with _lock, _environment(env):
        all_overrides = _dedupe(_env_overrides(os.environ) + list(overrides))
        try:
            with _hydra(conf_path):
                cfg, choices = _compose_raw(all_overrides, with_choices=True)
                # resolve while env is in place (oc.env reads os.environ)
                root: RootConf = _build(RootConf, OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
                presets: dict[str, SamplerConf] = {}
                for name in _group_options("sampler"):
                    if name == choices.get("sampler"):
                        presets[name] = root.sampler
                    else:
                        other, _ = _compose_raw([f"sampler={name}"], with_choices=False)
                        presets[name] = _build(
                            SamplerConf, OmegaConf.to_container(other.sampler, resolve=True, throw_on_missing=True)
                        )
        except JobError:
            raise
        except Exception as exc:  # Hydra/OmegaConf raise many types; one clear type for callers
            raise ConfigError(f"cannot compose configuration: {exc}") from exc
    _check(root)
    values = {f.name: getattr(root, f.name) for f in dataclasses.fields(RootConf)}
    return AppConfig(**values, choices=choices, sampler_presets=presets)


def _check(root: RootConf) -> None:
    if root.job_defaults.size not in SIZE_RANK:
        raise ConfigError(f"job_defaults.size must be one of {sorted(SIZE_RANK)} (DEFAULT_SIZE?)")
    if root.job_defaults.mode not in ("clip", "streaming"):
        raise ConfigError("job_defaults.mode must be clip or streaming")
    if root.gpu.max_size not in SIZE_RANK:
        raise ConfigError(f"gpu.max_size must be one of {sorted(SIZE_RANK)}")
    if root.storage.target not in ("s3", "volume", "local", "inline"):
        raise ConfigError("storage.target must be s3, volume, local or inline")
    for entry in root.storage.s3_inputs:
        if "/" not in entry or not entry.split("/", 1)[0]:
            raise ConfigError(f"storage.s3_inputs entries are 'bucket/prefix', got {entry!r}")
    if root.storage.s3.bucket and results_overlap_inputs(root.storage, root.storage.key_prefix):
        raise ConfigError("storage.key_prefix must not overlap storage.s3_inputs (results would be readable as inputs)")
    steps = root.job_defaults.sample_steps
    if steps is not None and not 1 <= steps <= 100:
        raise ConfigError("job_defaults.sample_steps (DEFAULT_SAMPLE_STEPS) must be in 1..100")
    par = root.gpu.parallel
    if par.ranks < 1 or par.method not in ("auto", "ulysses", "ring") or par.timeout_s <= 0:
        raise ConfigError("gpu.parallel needs ranks >= 1, method auto|ulysses|ring and timeout_s > 0")
    if par.ranks > 1 and (root.gpu.stream_blocks or root.gpu.offload_vae):
        raise ConfigError("gpu.parallel.ranks > 1 cannot be combined with gpu.stream_blocks or gpu.offload_vae")


def s3_input_prefixes(storage: StorageConf) -> tuple[str, ...]:
    """The "bucket/prefix" entries s3:// inputs may come from (default: <results bucket>/inputs/)."""
    if storage.s3_inputs:
        return tuple(storage.s3_inputs)
    return (f"{storage.s3.bucket}/inputs/",) if storage.s3.bucket else ()


def results_overlap_inputs(storage: StorageConf, key_prefix: str) -> str | None:
    """The input entry that S3 results under `key_prefix` could fall into, or None.

    A result's key is "<key_prefix without slashes>/<job id>.mp4" (worker/job.py), the job id having no "/".
    """
    folder = key_prefix.strip("/") + "/" if key_prefix.strip("/") else ""
    for entry in s3_input_prefixes(storage):
        bucket, _, prefix = entry.partition("/")
        if bucket != storage.s3.bucket:
            continue
        if folder.startswith(prefix) or (prefix.startswith(folder) and "/" not in prefix[len(folder):]):
            return entry
    return None


def secret_values(cfg: AppConfig) -> list[str]:
    """Credential values in the config, for the log redactor."""
    out = []
    for path, value in _flatten(cfg.tree()).items():
        if isinstance(value, str) and value and is_secret_name(path.rsplit(".", 1)[-1]):
            out.append(value)
    return out


# ---------------------------------------------------------------------------------------
# Per-job settings


@dataclass(frozen=True)
class ResolvedJobConfig:
    """Everything the engine needs to know about how to run one job (not what: media, prompt)."""

    model: str
    gpu: str
    sampler: str
    size: str
    mode: str
    speakers: int
    audio_type: Optional[str]
    sample_steps: int
    sample_shift: float
    text_guide_scale: float
    audio_guide_scale: float
    use_apg: bool
    apg_momentum: float
    apg_norm_threshold: float
    use_teacache: bool
    teacache_thresh: float
    frame_num: int
    motion_frame: int
    max_duration_s: float
    color_correction_strength: float
    seed: int
    lora_file: Optional[str]
    lora_scale: float
    output_target: str
    key_prefix: str
    presign_expiry_s: int
    guidance_every: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _invalid(message: str, field_name: str, hint: str | None = None) -> JobError:
    return JobError(
        ErrorCode.E_INPUT_VALIDATION,
        message,
        hint=hint,
        details={"errors": [{"field": field_name, "type": "worker_limit", "message": message}]},
    )


def _pick(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def apply_job_overrides(cfg: AppConfig, job: "JobInput") -> ResolvedJobConfig:
    """Combine the worker's config with a validated job; limits of this worker are checked here."""
    preset_name = job.sampler or cfg.sampler.name
    preset = cfg.sampler_presets.get(preset_name)
    if preset is None:
        raise _invalid(
            f"sampler preset {preset_name!r} is not available on this worker",
            "sampler",
            hint=f"use one of {sorted(cfg.sampler_presets)}",
        )
    size = job.size or cfg.job_defaults.size
    if SIZE_RANK[size] > SIZE_RANK[cfg.gpu.max_size]:
        raise _invalid(
            f"size {size} is larger than this worker's GPU tier ({cfg.gpu.name}) allows ({cfg.gpu.max_size})",
            "size",
            hint=f"use size={cfg.gpu.max_size} or an endpoint with a larger GPU",
        )
    speakers = job.speakers
    if speakers > cfg.model.max_speakers:
        raise _invalid(
            f"{speakers} speakers given but the loaded model ({cfg.model.name}) supports {cfg.model.max_speakers}",
            "audio",
            hint="send one speaker, or use an endpoint with a multi-speaker model",
        )
    # DEFAULT_SAMPLE_STEPS replaces the default preset's steps; a preset the job names keeps its own.
    default_steps = cfg.job_defaults.sample_steps if job.sampler is None else None
    steps = _pick(job.sample_steps, default_steps, preset.sample_steps)
    shift = _pick(job.sample_shift, preset.shift_720 if size == "infinitetalk-720" else preset.shift_480)
    frame_num = _pick(job.frame_num, preset.frame_num)
    motion_frame = _pick(job.motion_frame, preset.motion_frame)
    if motion_frame >= frame_num:
        raise _invalid(
            f"motion_frame ({motion_frame}) must be smaller than frame_num ({frame_num})", "motion_frame"
        )
    max_duration = _pick(job.max_duration_s, cfg.server.max_duration_s)
    if max_duration > cfg.server.max_duration_s:
        raise _invalid(
            f"max_duration_s {max_duration} exceeds this worker's limit of {cfg.server.max_duration_s} s",
            "max_duration_s",
        )
    out = job.output
    target = _pick(out.target if out else None, cfg.storage.target)
    if target == "s3" and not cfg.storage.s3.bucket:
        raise _invalid(
            "output.target s3 is not configured on this worker (no S3 bucket)",
            "output.target",
            hint="use output.target volume or inline, or set S3_BUCKET on the endpoint",
        )
    if target == "s3" and out and out.key_prefix is not None and results_overlap_inputs(cfg.storage, out.key_prefix):
        raise _invalid(
            "output.key_prefix lies in (or contains) the S3 inputs prefix; results are never written there",
            "output.key_prefix",
        )
    expiry = _pick(out.presign_expiry_s if out else None, cfg.storage.s3.presign_expiry_s)
    if expiry > cfg.storage.s3.max_presign_expiry_s:
        raise _invalid(
            f"output.presign_expiry_s exceeds {cfg.storage.s3.max_presign_expiry_s}", "output.presign_expiry_s"
        )
    seed = job.seed if job.seed is not None else secrets.randbelow(2**32)
    return ResolvedJobConfig(
        model=cfg.model.name,
        gpu=cfg.gpu.name,
        sampler=preset.name,
        size=size,
        mode=job.mode or cfg.job_defaults.mode,
        speakers=speakers,
        audio_type=job.effective_audio_type,
        sample_steps=int(steps),
        sample_shift=float(shift),
        text_guide_scale=float(_pick(job.text_guide_scale, preset.text_guide_scale)),
        audio_guide_scale=float(_pick(job.audio_guide_scale, preset.audio_guide_scale)),
        use_apg=bool(_pick(job.use_apg, cfg.job_defaults.use_apg)),
        apg_momentum=preset.apg_momentum,
        apg_norm_threshold=preset.apg_norm_threshold,
        use_teacache=bool(_pick(job.use_teacache, cfg.job_defaults.use_teacache)),
        teacache_thresh=float(_pick(job.teacache_thresh, preset.teacache_thresh)),
        guidance_every=int(_pick(job.guidance_every, preset.guidance_every)),
        frame_num=int(frame_num),
        motion_frame=int(motion_frame),
        max_duration_s=float(max_duration),
        color_correction_strength=float(_pick(job.color_correction_strength, preset.color_correction_strength)),
        seed=int(seed),
        lora_file=preset.lora_file,
        lora_scale=preset.lora_scale,
        output_target=target,
        key_prefix=_pick(out.key_prefix if out else None, cfg.storage.key_prefix),
        presign_expiry_s=int(expiry),
    )


# ---------------------------------------------------------------------------------------
# Template environment (shared with infra/)


@dataclass(frozen=True)
class TemplateEnv:
    """Env for a Runpod template: `plain` goes in as plain env; each `secret` key becomes a Runpod
    secret (infra.runpod_provider.RunpodSecret) that the template's env only refers to as
    `{{ RUNPOD_SECRET_<name> }}`, so no secret value is ever plain template env."""

    plain: dict[str, str]
    secret: dict[str, str]

    def merged(self) -> dict[str, str]:
        return {**self.plain, **self.secret}


_ENV_REF = re.compile(r"^\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,.*)?\}$", re.S)
_SECRET_VAR = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def _env_bindings(choices: Mapping[str, str], conf_dir: Path) -> dict[str, str]:
    """{ENV_VAR: config path} for every value that is exactly `${oc.env:VAR,...}` in the tree."""
    with _hydra(conf_dir):
        raw, _ = _compose_raw([f"{g}={o}" for g, o in choices.items()], with_choices=False)
    container = OmegaConf.to_container(raw, resolve=False)
    bindings: dict[str, str] = {}
    for path, value in _flatten(container).items():
        if isinstance(value, str):
            m = _ENV_REF.match(value)
            if m:
                bindings.setdefault(m.group(1), path)
    return bindings


def _env_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _hydra_value(value: Any) -> str:
    """Render a value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # Hydra keeps backslashes literal except before a quote, before `${` and at the end.
        escaped = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, value)
        escaped = escaped.replace("'", "\\'").replace("${", "\\${")
        return f"'{escaped}'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    raise ConfigError(f"cannot express {type(value).__name__} as a Hydra override")


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


def template_env(cfg: AppConfig, *, conf_dir: str | os.PathLike[str] | None = None) -> TemplateEnv:
    """The env under which `compose_config(env=...)` reproduces `cfg` exactly.

    Group choices go in INFINITETALK_<GROUP>; every value read through `${oc.env:VAR}` goes in VAR;
    anything else that differs from what those alone compose to goes in INFINITETALK_OVERRIDES
    (a JSON list). Variables and overrides that carry credentials go in `secret`.
    """
    conf_path = Path(conf_dir).resolve() if conf_dir else default_conf_dir()
    tree = cfg.tree()
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for group, var in GROUP_ENV_VARS.items():
        if group in cfg.choices:
            plain[var] = cfg.choices[group]
    with _lock:
        bindings = _env_bindings(cfg.choices, conf_path)
    for var, path in sorted(bindings.items()):
        value = _lookup(tree, path)
        if value is None:
            continue
        target = secret if (_SECRET_VAR.search(var) or is_secret_name(path.rsplit(".", 1)[-1])) else plain
        target[var] = _env_str(value)

    base = compose_config(env={**plain, **secret}, conf_dir=conf_path)
    want, got = _flatten(tree), _flatten(base.tree())
    plain_ov, secret_ov = [], []
    for path in sorted(want):
        if want[path] != got.get(path):
            ov = f"{path}={_hydra_value(want[path])}"
            (secret_ov if is_secret_name(path.rsplit(".", 1)[-1]) else plain_ov).append(ov)
    if plain_ov:
        plain[OVERRIDES_ENV_VAR] = json.dumps(plain_ov, separators=(",", ":"))
    if secret_ov:
        secret[SECRET_OVERRIDES_ENV_VAR] = json.dumps(secret_ov, separators=(",", ":"))
    result = TemplateEnv(plain=plain, secret=secret)
    check = compose_config(env=result.merged(), conf_dir=conf_path)
    if check.tree() != cfg.tree() or check.choices != cfg.choices:
        diff = sorted(p for p, v in _flatten(check.tree()).items() if want.get(p) != v)
        raise ConfigError(f"template env does not reproduce the config (differs at {diff[:5]})")
    return result


def describe(cfg: AppConfig) -> dict[str, Any]:
    """A log-safe summary of the composed config (credentials masked)."""
    out = {}
    for path, value in _flatten(cfg.tree()).items():
        out[path] = "[REDACTED]" if value is not None and is_secret_name(path.rsplit(".", 1)[-1]) else value
    return {"choices": dict(cfg.choices), "values": out}


def iter_overrides_for(values: Mapping[str, Any]) -> Iterable[str]:
    """Hydra override strings for trusted (operator) values, e.g. from the CLI or infra."""
    for path, value in values.items():
        yield f"{path}={_hydra_value(value)}"
