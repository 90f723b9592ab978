"""Errors that reach users.

Runpod carries a failed job's error as a plain string, so every user-facing failure is a
`JobError` whose `to_error_string()` is compact JSON that clients can parse back
(`{"code", "message", "hint", "details"}`). Engine code raises its own exception types;
the worker maps them onto these codes at the boundary.
"""
from __future__ import annotations

import json
import re
from enum import Enum
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pydantic is light, but only the helper below needs it
    from pydantic import ValidationError


class ErrorCode(str, Enum):
    E_INPUT_VALIDATION = "E_INPUT_VALIDATION"
    E_DOWNLOAD_FAILED = "E_DOWNLOAD_FAILED"
    E_AUDIO_EMBEDDING = "E_AUDIO_EMBEDDING"
    E_PIPELINE_LOAD = "E_PIPELINE_LOAD"
    E_OOM = "E_OOM"
    E_TIMEOUT = "E_TIMEOUT"
    E_FFMPEG = "E_FFMPEG"
    E_UPLOAD = "E_UPLOAD"
    E_CANCELLED = "E_CANCELLED"
    E_RANK_FAILED = "E_RANK_FAILED"
    E_INTERNAL = "E_INTERNAL"

    def __str__(self) -> str:  # so f"{code}" gives "E_OOM", not "ErrorCode.E_OOM"
        return self.value

    @property
    def default_hint(self) -> str:
        return DEFAULT_HINTS[self]


DEFAULT_HINTS: Mapping[ErrorCode, str] = {
    ErrorCode.E_INPUT_VALIDATION: "Fix the listed fields in the job input and resubmit.",
    ErrorCode.E_DOWNLOAD_FAILED: "Check that every media URL is publicly reachable, not too large, "
    "and of the expected type (image, video or audio).",
    ErrorCode.E_AUDIO_EMBEDDING: "Check that the audio decodes (WAV/MP3/FLAC/M4A), is not silent "
    "and is not empty; or try again.",
    ErrorCode.E_PIPELINE_LOAD: "A weight file is missing or corrupt: check CKPT_DIR, INFINITETALK_DIR, "
    "WAV2VEC_DIR (and QUANT_DIR) on the worker.",
    ErrorCode.E_OOM: "Out of GPU memory: use size=infinitetalk-480, fewer sample_steps or frames, "
    "a larger GPU tier, or enable offloading.",
    ErrorCode.E_TIMEOUT: "The job ran out of time: shorten the audio, lower sample_steps, "
    "or raise the endpoint's execution timeout.",
    ErrorCode.E_FFMPEG: "Encoding the MP4 failed: check that ffmpeg is installed in the image "
    "and that the audio decodes.",
    ErrorCode.E_UPLOAD: "Uploading the result failed: check the S3 endpoint, bucket and credentials "
    "(or choose another output target).",
    ErrorCode.E_CANCELLED: "The job was cancelled before it finished.",
    ErrorCode.E_RANK_FAILED: "One of this worker's GPU processes died or stopped answering during the job; "
    "the worker restarts its GPU processes before the next job: retry the job.",
    ErrorCode.E_INTERNAL: "An unexpected worker error; retry, and report the job id if it persists.",
}

# Codes whose failure leaves the GPU (or the process) in a state a retry on the same
# worker will not fix by default; the handler asks Runpod to replace the worker.
_REFRESH_BY_DEFAULT = frozenset()  # OOM usually clears after freeing tensors; callers decide.


class JobError(Exception):
    """A failure reported to the caller as code + message + hint + details."""

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        hint: str | None = None,
        details: Any = None,
        *,
        refresh_worker: bool | None = None,
    ) -> None:
        self.code = ErrorCode(code)
        self.message = clean_text(str(message))
        self.hint = clean_text(hint) if hint is not None else self.code.default_hint
        self.details = details
        self.refresh_worker = (
            bool(refresh_worker) if refresh_worker is not None else self.code in _REFRESH_BY_DEFAULT
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def __repr__(self) -> str:
        return f"JobError({self.code.value!r}, {self.message!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code.value,
            "message": self.message,
            "hint": self.hint,
            "details": _jsonable(self.details),
        }

    def to_error_string(self) -> str:
        """Compact JSON, because Runpod only accepts a string as a job's error."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False, default=str)

    @classmethod
    def from_error_string(cls, text: str) -> "JobError":
        """Parse what `to_error_string` produced (clients and tests use it)."""
        data = json.loads(text)
        return cls(data["code"], data["message"], data.get("hint"), data.get("details"))


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with lone UTF-16 surrogates replaced by U+FFFD.

    Python strings may hold them (JSON's \\ud800 escape decodes to one) but UTF-8 cannot encode
    them, so a message quoting such input could never be sent; every string that leaves the
    worker passes through here.
    """
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def jsonable(value: Any, _depth: int = 0) -> Any:
    """`value` as plain JSON data that UTF-8 can encode: strings cleaned, unknown types as str,
    containers deeper than 32 levels summarised (a result or error must always be sendable)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, str):
        return clean_text(value)
    if _depth >= 32:
        return f"<{type(value).__name__} nested too deep>"
    if isinstance(value, Mapping):
        return {clean_text(str(k)): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in value]
    return clean_text(str(value))


_jsonable = jsonable


# ---------------------------------------------------------------------------------------
# Safe previews of user values (for error details and logs)

_SECRETISH = re.compile(r"(key|secret|token|password|passwd|authorization|credential|signature)", re.I)
_NOT_SECRET_NAMES = frozenset({"key_prefix", "object_key", "s3_key", "cache_key"})
_QUERY = re.compile(r"\?.*$", re.S)
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#]*@")
MAX_PREVIEW_CHARS = 80


def is_secret_name(name: str) -> bool:
    """True when a field or log key name suggests its value is a credential."""
    return name.lower() not in _NOT_SECRET_NAMES and bool(_SECRETISH.search(name))


def safe_preview(value: Any) -> Any:
    """A short, secret-free stand-in for a user value.

    data: URIs keep only their media type and length; URLs lose their query string (presigned
    signatures live there); long strings are cut. Containers are summarised, never echoed.
    """
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):  # JSON allows 4300-digit numbers; a preview does not
        digits = len(str(value)) if abs(value) < 10**4000 else 4000
        return value if digits <= 40 else f"<whole number of {digits}+ digits>"
    if isinstance(value, str):
        value = clean_text(value)
        if value[:5].lower() == "data:":
            head = value[: min(len(value), 64)].split(",", 1)[0]
            return f"{head},…({len(value)} chars)"
        if "://" in value[:16]:
            value = _QUERY.sub("?…", value)
            value = _USERINFO.sub(r"\1***@", value)  # user:password@host
        if len(value) > MAX_PREVIEW_CHARS:
            return value[:MAX_PREVIEW_CHARS] + f"…({len(value)} chars)"
        return value
    if isinstance(value, Mapping):
        keys = [clean_text(str(k))[:MAX_PREVIEW_CHARS] for k in list(value.keys())[:10]]
        return f"<object with keys {keys}>"
    if isinstance(value, (list, tuple)):
        return f"<list of {len(value)}>"
    return f"<{type(value).__name__}>"


class InputProblem(ValueError):
    """A validator's complaint about one named field, with the hint that fixes it.

    Raised inside pydantic validators (it is a ValueError, so pydantic collects it); a model-level
    check has no field of its own in pydantic's report, so this carries the one the user must change.
    """

    def __init__(self, field: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.hint = hint


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "input"


def _choices(expected: Any) -> str:
    return re.sub(r"'([^']*)'", r"\1", str(expected))


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# pydantic error type -> a phrase about the field (ctx values filled in); anything else falls back
# to pydantic's own text with its wording replaced.
_PHRASES: Mapping[str, str] = {
    "missing": "is required",
    "extra_forbidden": "is not a field of the job input",
    "literal_error": "must be one of {expected}",
    "enum": "must be one of {expected}",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text",
    "string_unicode": "must be valid Unicode text (it holds a lone UTF-16 surrogate)",
    "string_too_long": "must be at most {max_length} characters",
    "too_long": "must have at most {max_length} items",
    "too_short": "must have at least {min_length} items",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "greater_than": "must be more than {gt}",
    "less_than": "must be less than {lt}",
    "dict_type": "must be an object ({{…}})",
    "model_type": "must be an object ({{…}})",
    "model_attributes_type": "must be an object ({{…}})",
    "list_type": "must be a list ([…])",
    "json_invalid": "is not valid JSON",
}


def _phrase(err: Mapping[str, Any]) -> str:
    kind = str(err.get("type", ""))
    ctx = {k: (_choices(v) if k == "expected" else _number(v)) for k, v in (err.get("ctx") or {}).items()}
    if kind == "string_too_short":
        return "must not be empty" if str(ctx.get("min_length")) == "1" else "must be at least {min_length} characters".format(**ctx)
    template = _PHRASES.get(kind)
    if template is not None:
        try:
            return template.format(**ctx)
        except (KeyError, IndexError):
            pass
    return _scrub_msg(str(err.get("msg", "")))


def error_from_pydantic(
    exc: "ValidationError",
    *,
    message: str | None = None,
    field_help: Mapping[str, str] | None = None,
    known_fields: tuple[str, ...] = (),
) -> JobError:
    """Turn a pydantic ValidationError into one E_INPUT_VALIDATION a person can act on.

    The message names each bad field in plain words ("sample_steps: must be at most 100 (got 500)"),
    the hint says what to put there (from `field_help`, the schema's field descriptions, or the
    validator's own InputProblem hint; a misspelt field gets its closest `known_fields` name).
    `details.errors` lists every problem with its field, pydantic's error type and a safe preview of
    the value (never a secret-looking field's value, never a whole data: URI).
    """
    import difflib

    help_ = dict(field_help or {})
    entries: list[dict[str, Any]] = []
    hints: list[str] = []
    seen: set[tuple[str, str]] = set()
    errors = exc.errors(include_url=False, include_context=True, include_input=True)
    for err in errors:
        if len(entries) >= MAX_REPORTED_ERRORS:  # 100k unknown keys: a bounded answer, in linear time
            break
        loc = tuple(err.get("loc", ()))
        # pydantic appends union member / function tags to loc; keep names users wrote.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        path = _cut(_loc_to_path(loc))  # a key name is the user's text: a 1 MB key must not come back
        problem = (err.get("ctx") or {}).get("error")
        hint = None
        if isinstance(problem, InputProblem):
            path, phrase, hint = problem.field, _scrub_msg(str(problem)), problem.hint
        else:
            phrase = _phrase(err)
        kind = str(err.get("type", ""))
        secret = any(isinstance(p, str) and is_secret_name(p) for p in loc)
        shown = None
        if "input" in err and kind not in ("missing", "extra_forbidden", "value_error", "assertion_error"):
            value = err["input"]
            if not secret and (value is None or isinstance(value, (bool, int, float, str))):
                preview = safe_preview(value)
                shown = "null" if value is None else (str(preview).lower() if isinstance(value, bool) else repr(preview) if isinstance(value, str) else preview)
        text = f"{phrase} (got {shown})" if shown is not None and len(str(shown)) <= 60 else phrase
        if (path, text) in seen:
            continue  # union branches can report the same thing twice
        seen.add((path, text))
        if hint is None:
            hint = _hint_for(kind, path, help_, known_fields, difflib)
        entry: dict[str, Any] = {"field": path, "type": kind, "message": text, "hint": hint}
        if "input" in err and kind not in ("missing", "extra_forbidden"):  # an unknown field's value fixes nothing
            entry["input"] = "[REDACTED]" if secret else safe_preview(err["input"])
        entries.append(entry)
        head, _, about = hint.partition(": ")
        if about and any(h.endswith(": " + about) for h in hints):
            hint = f"{head} (as above)."  # several problems in one field: its description once, not per problem
        if hint not in hints:
            hints.append(hint)
    lines = [f"{e['field']}: {e['message']}" for e in entries]
    total = len(errors) if len(entries) >= MAX_REPORTED_ERRORS else len(lines)
    if message is None:
        if total == 1:
            message = lines[0]
        else:
            message = f"{total} problems in the job input: " + "; ".join(lines[:4]) + ("; …" if total > 4 else "")
    details: dict[str, Any] = {"errors": entries}
    if total > len(entries):
        details["more_errors"] = total - len(entries)
    return JobError(ErrorCode.E_INPUT_VALIDATION, message, hint=" ".join(hints[:3]), details=details)


# At most this many problems are listed (the count says how many there were): the answer stays small
# and is built in linear time whatever the input holds.
MAX_REPORTED_ERRORS = 20
MAX_PATH_CHARS = 120


def _cut(path: str) -> str:
    return path if len(path) <= MAX_PATH_CHARS else path[:MAX_PATH_CHARS] + f"…({len(path)} chars)"


def _hint_for(kind: str, path: str, help_: Mapping[str, str], known: tuple[str, ...], difflib: Any) -> str:
    plain = re.sub(r"\[\d+\]", "", path)  # loras[1].scale is described as loras.scale
    about = (help_.get(path) or help_.get(plain) or help_.get(path.split("[", 1)[0])
             or help_.get(path.rsplit(".", 1)[0]))
    if kind == "extra_forbidden":
        name = path.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            return f"Rename {path} to {close[0]}, or remove it."
        return f"Remove {path}; `infinitetalk schema` lists the fields a job takes."
    about = about[:1].lower() + about[1:] if about else about
    if kind == "missing":
        return f"Add {path}" + (f": {about}" if about else ".")
    return f"Change {path}" + (f": {about}" if about else ".")


_DATA_URI_IN_TEXT = re.compile(r"data:[^\s,'\"]{0,64},[A-Za-z0-9+/=_-]{16,}")


def _scrub_msg(msg: str) -> str:
    """pydantic messages can quote the input (e.g. literal errors); cut data: payloads out."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    msg = msg.replace("Input should be", "must be").replace("Field required", "is required")
    msg = _DATA_URI_IN_TEXT.sub("data:…", msg)
    return msg if len(msg) <= 300 else msg[:300] + "…"
