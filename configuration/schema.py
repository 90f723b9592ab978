"""The configuration's schema: frozen dataclasses, one per `conf/` group, and the composed view.

They are registered in Hydra's ConfigStore as `base_<group>` (configuration/compose.py) and, after
`OmegaConf.to_object`, are the typed view itself. Frozen; the ConfigStore copies have their read-only
flag cleared so that Hydra can merge the yaml files into them. Deploy-only fields (DeployConf) are
read by infra/, not by the worker.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

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
]


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
    adapter: str = "single"  # InfiniteTalk's audio adapter (single | multi): names its files in the variants
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
    # Demucs v4 htdemucs weights (safetensors written by `weights isolation` from the published .th) for jobs
    # with audio_isolation; read on the first such job, never at start. Unset: such jobs are refused.
    isolation_path: Optional[str] = None
    isolation_preload: bool = False  # load the isolation model at worker start (with the engine) instead
    weights: list[HfSource] = field(default_factory=list)


@dataclass(frozen=True)
class ParallelConf:
    """Sequence parallelism over the GPUs of one worker (worker/engine/parallel/): `ranks` processes, one per
    GPU; 1 is the single-GPU path. The endpoint gets exactly that many GPUs (its gpuCount, infra/component.py)."""

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
    # The DiT block Linears' precision on this tier: "model" (the model variant's own `quant`), "fp8" (e4m3 on any
    # model: read as fp8 from an fp8 bundle / quant file, else quantised per row at load) or "none" (bf16).
    quant: str = "model"
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
    # torch.compile each DiT block (worker/engine/kernels/compile.py); the first job of each shape pays the compile.
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
    # (no gpu_count: the endpoint gets gpu.parallel.ranks GPUs, one name per setting)
    scaler_type: str = "QUEUE_DELAY"
    scaler_value: int = 4


@dataclass(frozen=True)
class DownloadConf:
    max_image_bytes: int = 50 * 1024 * 1024
    max_audio_bytes: int = 200 * 1024 * 1024
    max_video_bytes: int = 1024 * 1024 * 1024
    max_lora_bytes: int = 2 * 1024 * 1024 * 1024  # a job's own LoRA file (job field loras)
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
    # Jobs' own LoRA files, kept by content hash (worker/loras.py). Empty: <volume_root>/cache/loras when the
    # volume is mounted, else <work_dir>/lora-cache. Files beyond lora_cache_max_bytes go, least recently used
    # first; a URL or s3 ref is taken from the cache without a download for lora_ref_ttl_s seconds.
    lora_cache_dir: str = ""
    lora_cache_max_bytes: int = 20 * 1024 * 1024 * 1024
    lora_ref_ttl_s: float = 86400.0
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
