"""The job contract shared by the worker, the client, infra and tools (pydantic + stdlib only).

`contract.job`: the job's input and output models and their parsing; `contract.errors`: error codes,
JobError and the words users see; `contract.choices`: named choices derived from `conf/` and the
media constants (fps, sample rate), each defined once; `contract.urlform`: URL shape checks.
Nothing here imports the worker, torch or Hydra.
"""
from importlib import import_module
from typing import Any

# name -> module, imported on first use: the engine reads `contract.choices` (stdlib only) and must not pull in
# pydantic through this package's import (the GPU bench machines run the engine without it).
_LAZY = {
    **dict.fromkeys(("AUDIO_SAMPLE_RATE", "VIDEO_FPS", "MODES", "OUTPUT_TARGETS", "SAMPLER_PRESETS", "SIZES"),
                    "contract.choices"),
    **dict.fromkeys(("ErrorCode", "JobError"), "contract.errors"),
    **dict.fromkeys(("JobInput", "JobOutput", "job_input_json_schema", "parse_job_input"), "contract.job"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'contract' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AUDIO_SAMPLE_RATE",
    "VIDEO_FPS",
    "MODES",
    "OUTPUT_TARGETS",
    "SAMPLER_PRESETS",
    "SIZES",
    "ErrorCode",
    "JobError",
    "JobInput",
    "JobOutput",
    "job_input_json_schema",
    "parse_job_input",
]
