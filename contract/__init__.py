"""The job contract shared by the worker, the client, infra and tools (pydantic + stdlib only).

`contract.job`: the job's input and output models and their parsing; `contract.errors`: error codes,
JobError and the words users see; `contract.choices`: named choices derived from `conf/` and the
media constants (fps, sample rate), each defined once; `contract.urlform`: URL shape checks.
Nothing here imports the worker, torch or Hydra.
"""
from contract.choices import AUDIO_SAMPLE_RATE, MODES, OUTPUT_TARGETS, SAMPLER_PRESETS, SIZES, VIDEO_FPS
from contract.errors import ErrorCode, JobError
from contract.job import JobInput, JobOutput, job_input_json_schema, parse_job_input

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
