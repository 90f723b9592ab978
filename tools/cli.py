"""`infinitetalk`: one command for local runs, the local endpoint, weights tooling and the clients.

`run PAYLOAD [hydra overrides]` runs a job in this process; relative media paths in the payload
are read relative to the payload file, whose folder becomes an allowed root for this run only.
It draws one progress line on stderr and prints the video's path on stdout (`--json`: the whole
result). The console script is installed in both environments: the client one (.venv-client,
no Hydra, torch or runpod) offers only the commands it can run.
"""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

CLIENT_COMMANDS = {"submit", "status", "cancel", "estimate", "ui"}
# What each worker-side command imports; in an environment without them it is not offered.
WORKER_NEEDS = {"run": ("hydra", "omegaconf", "torch", "av"), "serve": ("fastapi", "uvicorn", "runpod"),
                "weights": ("hydra", "omegaconf", "safetensors")}
CONFIG_GROUPS = ("model", "gpu", "sampler", "storage", "deploy")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def available(command: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in WORKER_NEEDS.get(command, ()))


def _not_here(command: str) -> int:
    print(f"infinitetalk {command} needs the worker environment (.venv, made by scripts/bootstrap.sh); this "
          f"environment ({sys.prefix}) has the client only: submit, status, cancel, estimate, ui, schema",
          file=sys.stderr)
    return EXIT_USAGE


def _resolve_paths(payload: dict[str, Any], base: Path) -> dict[str, Any]:
    from contract.job import media_ref_kind

    def fix(ref: Any) -> Any:
        if isinstance(ref, str) and media_ref_kind(ref) == "path" and not Path(ref).is_absolute():
            return str((base / ref).resolve())
        return ref

    out = dict(payload)
    for key in ("image", "cond_image", "video", "cond_video"):
        if key in out:
            out[key] = fix(out[key])
    for key in ("audio", "cond_audio"):
        if isinstance(out.get(key), dict):
            out[key] = {k: fix(v) for k, v in out[key].items()}
        elif key in out:
            out[key] = fix(out[key])
    return out


def _with_feature_flags(payload: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], list[Path]]:
    """The payload with the flags' fields on top (client/flags.py, the same flags as `submit`); a local mask or
    LoRA file is passed as its absolute path and its folder becomes an allowed root for this run."""
    from client.flags import feature_fields

    params, media = feature_fields(args)
    roots: list[Path] = []

    def local(ref: Any) -> Any:
        if isinstance(ref, str) and not ref.startswith("[") and "://" not in ref and not ref.startswith("data:") \
                and Path(ref).expanduser().is_file():
            file = Path(ref).expanduser().resolve()
            roots.append(file.parent)
            return str(file)
        return ref

    out = {**payload, **params}
    if "mask" in media:
        out["mask"] = local(media["mask"])
    if "masks" in media:
        out["masks"] = {p: local(m) for p, m in media["masks"].items()}
    if "loras" in media:
        out["loras"] = [{"ref": local(ref), **({} if scale is None else {"scale": scale})}
                        for ref, scale in media["loras"]]
    return out, list(dict.fromkeys(roots))


def override_problem(overrides: list[str], message: str) -> str:
    """One line for a configuration that does not compose: the bad override and the valid choices."""
    from configuration import default_conf_dir

    conf = default_conf_dir()
    for ov in overrides:
        key, eq, value = ov.lstrip("+~").partition("=")
        if not eq:
            return f"override {ov!r} needs the form key=value, e.g. sampler=turbo"
        if key in CONFIG_GROUPS:
            options = sorted(p.stem for p in (conf / key).glob("*.yaml") if not p.stem.startswith("base_"))
            if value not in options:
                return f"unknown {key} {value!r} in {ov!r}; choose one of: {', '.join(options)}"
    m = re.search(r"Could not override '([^']+)'", message)
    if m:
        key = m.group(1)
        head = key.split(".", 1)[0]
        close = difflib.get_close_matches(head, CONFIG_GROUPS + ("server", "job_defaults"), n=1)
        guess = f"; did you mean {close[0]}{key[len(head):]}?" if close and close[0] != head else ""
        return f"{key} is not a setting of the configuration{guess} (groups: {', '.join(CONFIG_GROUPS)}; see conf/)"
    first = message.replace("cannot compose configuration: ", "").strip().splitlines()[0]
    return f"the overrides do not compose: {first}"


class RunProgress:
    """One progress line with elapsed time and ETA: redrawn in place on a terminal, one line per stage
    (and per tenth of the way) otherwise, so logs and CI get a short trail instead of a flood."""

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.start = time.monotonic()
        self.last_key: tuple[str, int] | None = None

    def __call__(self, p: dict[str, Any]) -> None:
        pct = max(0.0, min(100.0, float(p.get("percent") or 0.0)))
        stage = str(p.get("stage") or "")
        elapsed = time.monotonic() - self.start
        eta = p.get("eta_s")
        if eta is None and pct >= 5 and stage != "done":
            eta = elapsed * (100 - pct) / pct
        detail = ""
        if p.get("chunks") and p.get("steps"):
            detail = f" chunk {p.get('chunk')}/{p['chunks']} step {p.get('step')}/{p['steps']}"
        filled = int(round(self.width * pct / 100))
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {pct:5.1f}% {stage}{detail}"
                f" · {elapsed:.0f} s" + (f" · eta {eta:.0f} s" if eta is not None and stage != "done" else ""))
        if self.tty:
            cols = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r\x1b[2K" + line[: cols - 1])
            if stage == "done":
                self.stream.write("\n")
        else:
            key = (stage, int(pct // 10))
            if key == self.last_key:
                return
            self.last_key = key
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def cmd_run(args: argparse.Namespace) -> int:
    from configuration import ConfigError, compose_config, secret_values
    from contract.errors import ErrorCode, JobError
    from worker.job import JobContext, run_job
    from worker.logging_setup import configure_logging

    path = Path(args.payload)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"error: cannot read the payload {path}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    payload = doc.get("input", doc) if isinstance(doc, dict) else doc
    roots = [path.resolve().parent]
    if isinstance(payload, dict):
        payload = _resolve_paths(payload, path.resolve().parent)
        payload, flag_roots = _with_feature_flags(payload, args)
        roots += flag_roots
    try:
        cfg = compose_config(args.overrides)
    except ConfigError as exc:
        print(f"error: {override_problem(list(args.overrides), str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level or cfg.server.log_level, secrets=secret_values(cfg))
    ctx = JobContext.create(cfg, extra_roots=roots)
    bar = None if args.quiet else RunProgress()
    job_id = f"local-{uuid.uuid4().hex[:8]}"
    try:
        out = run_job(job_id, payload, ctx, bar or (lambda _p: None))
    except JobError as exc:
        if bar:
            bar.close()
        if args.json:
            print(json.dumps({"error": exc.to_dict()}, indent=2))
        if exc.code is ErrorCode.E_CANCELLED:
            print(f"job {job_id} cancelled: {exc.message}", file=sys.stderr)
        else:
            print(f"error {exc.code.value}: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if bar:
            bar.close()
        print(f"\ninterrupted; job {job_id} stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    where = out.get("video_path") or out.get("video_url")
    if where is None and out.get("video_base64"):
        from client.results import save_result

        where = str(save_result(out, Path(args.output_dir), job_id))
    print(f"done: {out['duration_s']:.2f} s of video, {out['width']}x{out['height']}, seed {out['seed']}",
          file=sys.stderr)
    if out.get("truncated"):
        print(f"note: the video leaves out {out['truncated_s']:.2f} s of the audio (mode {out['config'].get('mode')},"
              f" max_duration_s); mode=streaming renders all of it", file=sys.stderr)
    print(where)
    return EXIT_OK


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults beside each flag, except a credential's (its default may come from the environment)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        from contract.errors import is_secret_name

        if is_secret_name(action.dest):
            return action.help
        return super()._get_help_string(action)


def serve_parser() -> argparse.ArgumentParser:
    """The local endpoint's own flags, under this command's name and with their defaults shown."""
    from tools.local_endpoint.cli import build_parser

    p = build_parser()
    p.prog = "infinitetalk serve"
    p.formatter_class = _DefaultsShown
    for action in p._actions:  # the formatter shows a default only beside some help text
        if action.help is None and action.default is not argparse.SUPPRESS:
            action.help = action.dest.replace("_", " ")
    return p


def cmd_serve(argv: list[str]) -> int:
    serve_parser().parse_args(argv)  # --help and usage errors under the real name
    from tools.local_endpoint.cli import main as serve_main

    return serve_main(argv) or 0


def cmd_schema(_: argparse.Namespace) -> int:
    from contract.job import job_input_json_schema

    print(json.dumps(job_input_json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    missing = sorted(c for c in WORKER_NEEDS if not available(c))
    epilog = (f"Not in this environment: {', '.join(missing)} (they need the worker environment, .venv)."
              if missing else None)
    parser = argparse.ArgumentParser(prog="infinitetalk", description=__doc__, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    if "run" not in missing:
        run = sub.add_parser("run", help="run one job payload locally (default: tiny model, local storage)",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        run.add_argument("payload", help="JSON file: {'input': {...}} or the input object itself")
        run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. sampler=turbo gpu=cpu")
        run.add_argument("--quiet", action="store_true", help="no progress line on stderr")
        run.add_argument("--json", action="store_true", help="print the whole result (or error) as JSON on stdout")
        run.add_argument("--output-dir", default="outputs/infinitetalk", help="where an inline result is saved")
        run.add_argument("--log-level", default=None, help="default: the config's server.log_level")
        from client.flags import add_feature_flags

        add_feature_flags(run.add_argument_group("job fields on top of the payload (framing, scenes, masks, LoRAs, "
                                                 "audio; unset: the payload's)"))
        run.set_defaults(fn=cmd_run)
    schema = sub.add_parser("schema", help="print the job input's JSON schema")
    schema.set_defaults(fn=cmd_schema)
    if "serve" not in missing:
        sub.add_parser("serve", help="the Runpod-compatible local endpoint (see `infinitetalk serve --help`)")
    if "weights" not in missing:
        sub.add_parser("weights", help="weights tooling: fetch, verify, repack, upload-volume, make-tiny")
    for name in sorted(CLIENT_COMMANDS):
        sub.add_parser(name, help=f"client: {name} (see `infinitetalk {name} --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLIENT_COMMANDS:
        from client.cli import main as client_main

        return client_main(argv) or 0
    if argv and argv[0] in WORKER_NEEDS and not available(argv[0]):
        return _not_here(argv[0])
    if argv and argv[0] == "serve":
        return cmd_serve(argv[1:])
    if argv and argv[0] == "weights":
        from tools.weights.cli import main as weights_main

        return weights_main(argv[1:]) or 0
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # options may come after the overrides (`run job.json sampler=turbo --json`): argparse leaves the
    # overrides that follow an option unparsed, so they are gathered here
    stray = [a for a in extra if a.startswith("-")]
    if stray or (extra and getattr(args, "command", None) != "run"):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
