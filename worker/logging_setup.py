"""JSON-lines logging with job correlation and secret redaction.

Every line is one JSON object on stderr (Runpod's log view keeps stderr): `ts`, `level`,
`event`, the bound `job_id`, and the event's fields. Redaction runs last before rendering,
after exceptions are formatted, so tracebacks are scrubbed too. It removes:

* values under keys that name credentials (key/secret/token/password/authorization/...),
* any occurrence of a secret value registered with `register_secret` (S3 keys, API keys),
* presigned URL signatures and credentials (`X-Amz-Signature=...`, `X-Amz-Credential=...`,
  `X-Amz-Security-Token=...`, `Signature=...`), and `Bearer ...` tokens,
* large `data:` payloads (cut to their media type and length).
"""
from __future__ import annotations

import logging
import re
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, MutableMapping, TextIO

import structlog

from contract.errors import clean_text, is_secret_name

__all__ = [
    "REDACTED",
    "configure_logging",
    "get_logger",
    "bind_job",
    "register_secret",
    "register_secrets",
    "clear_secrets",
    "redact_text",
    "redact_value",
    "redact_processor",
]

REDACTED = "[REDACTED]"
_MIN_SECRET_LEN = 4  # shorter values would blank ordinary words

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_re: re.Pattern[str] | None = None

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"'<>]+", re.I), r"\1" + REDACTED),
    (re.compile(r"((?:^|[?&])(?:Signature|AWSAccessKeyId|sig|token|access_token|api_key)=)[^&\s\"'<>]+", re.I),
     r"\1" + REDACTED),
    (re.compile(r"(\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=\-]{8,}", re.I), r"\1" + REDACTED),
    (re.compile(r"(data:[\w.+\-]+/[\w.+\-]+(?:;[\w.+\-]+=[\w.+\-]+)*;base64,)([A-Za-z0-9+/=_\-]{64,})"),
     None),  # replaced by a function below (keeps the length)
    (re.compile(r"(://[^/\s:@]+:)[^@/\s]+(@)"), r"\1" + REDACTED + r"\2"),  # user:pass@host
]


def register_secret(value: str | None) -> None:
    """Redact this exact value wherever it appears from now on (e.g. the S3 secret key)."""
    global _secret_re
    if not value or not isinstance(value, str) or len(value) < _MIN_SECRET_LEN:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first so a secret containing another is removed whole.
        _secret_re = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def register_secrets(values: Iterable[str | None]) -> None:
    for v in values:
        register_secret(v)


def clear_secrets() -> None:
    global _secret_re
    with _secrets_lock:
        _secrets.clear()
        _secret_re = None


def _data_sub(m: re.Match[str]) -> str:
    return f"{m.group(1)}…({len(m.group(2))} chars)"


def redact_text(text: str) -> str:
    # Lone surrogates (a user's string logged before validation) could not be written to a UTF-8 stream.
    text = clean_text(text)
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for rx, repl in _PATTERNS:
        text = rx.sub(repl if repl is not None else _data_sub, text)
    return text


def redact_value(value: Any, _depth: int = 0) -> Any:
    if _depth > 20:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            (clean_text(k) if isinstance(k, str) else k): (
                REDACTED if isinstance(k, str) and is_secret_name(k) and v not in (None, "") else redact_value(v, _depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v, _depth + 1) for v in value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    # Anything else is rendered by the JSON renderer with str(); redact that text now.
    return redact_text(str(value))


_NEVER_REDACT_KEYS = frozenset({"event", "level", "ts", "timestamp", "logger", "job_id"})


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: scrub keys, registered values and URL signatures."""
    for key in list(event_dict.keys()):
        value = event_dict[key]
        if key not in _NEVER_REDACT_KEYS and is_secret_name(key) and value not in (None, ""):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_value(value)
    return event_dict


_LEVELS = {"CRITICAL": 50, "ERROR": 40, "WARNING": 30, "WARN": 30, "INFO": 20, "DEBUG": 10}


def _processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_processor,
    ]


def configure_logging(
    level: str | int = "INFO",
    *,
    stream: TextIO | None = None,
    secrets: Iterable[str | None] = (),
    capture_stdlib: bool = True,
) -> None:
    """Set up structlog (and, optionally, the stdlib root logger) to write redacted JSON lines.

    `stream` defaults to sys.stderr at call time. Call once at worker start, after the config is
    composed, passing its credentials (`configuration.secret_values(cfg)`) as `secrets`.
    """
    register_secrets(secrets)
    out = stream if stream is not None else sys.stderr
    lvl = level if isinstance(level, int) else _LEVELS.get(str(level).upper(), 20)
    structlog.configure(
        processors=[*_processors(), structlog.processors.JSONRenderer(default=str, ensure_ascii=False)],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    if capture_stdlib:
        handler = logging.StreamHandler(out)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[
                    structlog.contextvars.merge_contextvars,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                    structlog.processors.format_exc_info,
                ],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    redact_processor,
                    structlog.processors.JSONRenderer(default=str, ensure_ascii=False),
                ],
            )
        )
        root = logging.getLogger()
        for h in list(root.handlers):
            if getattr(h, "_infinitetalk", False):
                root.removeHandler(h)
        handler._infinitetalk = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(lvl)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A lazy logger: safe at module import, it follows whatever `configure_logging` set up later."""
    if name:
        initial.setdefault("component", name)
    return structlog.get_logger(**initial)


@contextmanager
def bind_job(job_id: str, **fields: Any) -> Iterator[None]:
    """Bind job_id (and any fields) to every log line in this context, thread and task."""
    with structlog.contextvars.bound_contextvars(job_id=job_id, **fields):
        yield
