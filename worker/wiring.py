"""Turns the composed config into the typed settings each stage takes.

Kept apart from the stages so that each of them (fetch, media guard, storage, engine) stays
ignorant of Hydra, and so that one place decides how a config field maps to a runtime knob.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from configuration import AppConfig, s3_input_prefixes
from worker.engine import CheckpointLayout  # the facade: torch-free
from worker.inputs.fetch import FetchPolicy
from worker.inputs.media_guard import MediaLimits
from worker.inputs.netguard import NetPolicy
from worker.storage.base import S3Settings, StorageSettings


def _secret(value: str | None) -> SecretStr | None:
    return SecretStr(value) if value else None


def s3_settings(cfg: AppConfig, *, key_prefix: str | None = None, presign_expiry_s: int | None = None) -> S3Settings:
    s3 = cfg.storage.s3
    return S3Settings(
        bucket=s3.bucket or "",
        endpoint_url=s3.endpoint or None,
        region=s3.region or "us-east-1",
        access_key=_secret(s3.access_key),
        secret_key=_secret(s3.secret_key),
        public_base_url=s3.public_base or None,
        presign_expiry_s=presign_expiry_s or s3.presign_expiry_s,
        key_prefix=key_prefix if key_prefix is not None else cfg.storage.key_prefix,
        multipart_threshold_bytes=s3.multipart_threshold_bytes,
    )


def fetch_policy(cfg: AppConfig, extra_roots: Iterable[Path] = ()) -> FetchPolicy:
    d = cfg.server.download
    roots = tuple(Path(r) for r in cfg.server.allowed_roots) + tuple(Path(r) for r in extra_roots)
    has_s3 = bool(cfg.storage.s3.bucket or cfg.storage.s3.endpoint or cfg.storage.s3.access_key)
    return FetchPolicy(
        max_bytes={"image": d.max_image_bytes, "audio": d.max_audio_bytes, "video": d.max_video_bytes,
                   "lora": d.max_lora_bytes},
        allow_http=cfg.server.allow_http,
        connect_timeout_s=d.connect_timeout_s,
        read_timeout_s=min(d.timeout_s, 60.0),
        total_timeout_s=d.timeout_s,
        attempts=max(1, d.retries),
        max_redirects=d.max_redirects,
        net=NetPolicy(allow=tuple(cfg.server.allow_loopback_hosts)),
        volume_roots=roots,
        s3=s3_settings(cfg) if has_s3 else None,
        s3_allowed_prefixes=s3_input_prefixes(cfg.storage),
        volume_excluded=_not_inputs(cfg),
    )


def _not_inputs(cfg: AppConfig) -> tuple[Path, ...]:
    """Worker-written folders a job must not read back as media: other jobs' results and checkpoints."""
    out = [Path(cfg.storage.volume.root)]
    if cfg.server.checkpoint_dir:
        out.append(Path(cfg.server.checkpoint_dir))
    cache = compile_cache_dir(cfg)
    if cache is not None:
        out.append(cache)
    out.append(lora_cache_dir(cfg))
    return tuple(out)


def lora_cache_dir(cfg: AppConfig) -> Path:
    """Where jobs' own LoRA files are kept by content hash (worker/loras.py): on the volume when it is mounted,
    so every worker of the endpoint reuses a file one of them fetched; else beside the job folders."""
    if cfg.server.lora_cache_dir:
        return Path(cfg.server.lora_cache_dir)
    volume = Path(cfg.server.volume_root)
    return volume / "cache" / "loras" if volume.is_dir() else Path(cfg.server.work_dir) / "lora-cache"


def media_limits(cfg: AppConfig) -> MediaLimits:
    return MediaLimits(
        max_image_pixels=cfg.server.max_image_pixels,
        max_video_duration_s=cfg.server.max_duration_s,
        max_video_frames=cfg.server.max_video_frames,
        max_audio_duration_s=cfg.server.max_duration_s,
    )


def storage_settings(cfg: AppConfig, target: str, *, key_prefix: str, presign_expiry_s: int) -> StorageSettings:
    st = cfg.storage
    volume = Path(st.volume.root)
    return StorageSettings(
        kind=target,
        s3=s3_settings(cfg, key_prefix=key_prefix, presign_expiry_s=presign_expiry_s),
        volume_root=volume.parent,
        volume_outputs_dir=volume.name,
        local_root=Path(st.local.root),
        inline_max_bytes=st.inline.max_bytes,
    )


def checkpoint_layout(cfg: AppConfig) -> CheckpointLayout:
    m = cfg.model
    return CheckpointLayout(
        ckpt_dir=Path(m.ckpt_dir),
        infinitetalk_file=Path(m.infinitetalk_file),
        wav2vec_dir=Path(m.wav2vec_dir),
        dit_bundle=Path(m.dit_bundle) if m.dit_bundle else None,
        quant_file=Path(m.quant_file) if m.quant == "fp8" and m.quant_file else None,
    )


def process_env(cfg: AppConfig) -> dict[str, str]:
    """Environment the GPU tier wants set before torch starts (the CUDA allocator and the compile
    caches read it once)."""
    env = {"PYTORCH_CUDA_ALLOC_CONF": cfg.gpu.cuda_alloc_conf} if cfg.gpu.cuda_alloc_conf else {}
    cache = compile_cache_dir(cfg)
    if cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
        env["TRITON_CACHE_DIR"] = str(cache / "triton")
    return env


def compile_cache_dir(cfg: AppConfig) -> Path | None:
    """Where compiled kernels persist, or None for the process default.

    A compiled DiT costs ~18 s per batch shape in a fresh process and ~6.6 s with Inductor's caches
    warm (bench/README.md section 10), so on the shared volume every worker after the first skips
    most of it. Only for tiers that compile, and only when the volume is mounted (a worker without
    one must not write into a path that is not there).
    """
    setting = cfg.server.compile_cache_dir
    if not (cfg.gpu.compile and cfg.gpu.device != "cpu") or setting == "off":
        return None
    if setting:
        return Path(setting)
    volume = Path(cfg.server.volume_root)
    return volume / "cache" / "torch-compile" if volume.is_dir() else None


def engine_options(cfg: AppConfig) -> dict[str, Any]:
    """Keyword arguments of `worker.engine.EngineOptions` (same names as conf/gpu where the setting is the same)."""
    gpu = cfg.gpu
    return {
        "device": gpu.device,
        "dtype": cfg.model.dtype if gpu.device == "cpu" else gpu.dtype,
        "quant": cfg.model.quant if gpu.quant == "model" else gpu.quant,
        "attention": gpu.attention,
        "offload_t5": gpu.offload_t5,
        "compile": gpu.compile and gpu.device != "cpu",
        "offload_clip": gpu.offload_clip,
        "offload_vae": gpu.offload_vae,
        "stream_blocks": gpu.stream_blocks,
        "batch_passes": gpu.batch_passes,
        "lora_dir": cfg.model.lora_dir or "",
        "lora_file": cfg.sampler.lora_file or "",
        "lora_scale": cfg.sampler.lora_scale,
        "fault": cfg.server.fault,
    }
