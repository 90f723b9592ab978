"""The core of ci/pulumi.sh: what CI runs for `preview` or `up`, decided from its environment.

Kept in Python so that it is tested without the Pulumi CLI: `plan` is a pure function of the
environment and the checkout, returning the CLI calls (with any secret passed on stdin, never in
argv); `main` runs them. Rules it enforces:

- the stack's config file `Pulumi.<stack>.yaml` is committed (a missing one would make `pulumi up`
  deploy defaults), else a clear error;
- a self-managed backend (`PULUMI_BACKEND_URL`) needs `PULUMI_CONFIG_PASSPHRASE` (or `_FILE`);
- `IMAGE_TAG` (the image CI built, by digest or release tag) is written to `infinitetalk:image`,
  so the template receives it and later runs keep it until CI sets another;
- `up` refreshes first, so drift made in the console is seen and put back.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from infra.deploy_env import ImageRefError, check_image

COMMANDS = ("preview", "up")


class CiConfigError(RuntimeError):
    """CI's environment or checkout cannot run this command; the message says what to set."""


@dataclass(frozen=True)
class Call:
    argv: tuple[str, ...]
    stdin: Optional[str] = field(default=None, repr=False)  # secrets travel here, never in argv


@dataclass(frozen=True)
class Plan:
    calls: tuple[Call, ...]
    env: Mapping[str, str] = field(repr=False, default_factory=dict)


def stack_file(repo: Path, stack: str) -> Path:
    return repo / f"Pulumi.{stack.rsplit('/', 1)[-1]}.yaml"


def plan(command: str, environ: Mapping[str, str], repo: Path) -> Plan:
    if command not in COMMANDS:
        raise CiConfigError(f"usage: ci/pulumi.sh {'|'.join(COMMANDS)}")
    stack = environ.get("PULUMI_STACK", "")
    if not stack:
        raise CiConfigError("set PULUMI_STACK (org/project/stack, or the stack name for a self-managed backend)")
    if not environ.get("RUNPOD_API_KEY"):
        raise CiConfigError("set RUNPOD_API_KEY (a CI secret of this job's environment)")
    cfg = stack_file(repo, stack)
    if not cfg.is_file():
        raise CiConfigError(
            f"{cfg.name} is not committed: copy Pulumi.example.yaml to {cfg.name}, set its overrides, commit it"
        )
    backend = environ.get("PULUMI_BACKEND_URL", "")
    if backend and not backend.startswith("https://api.pulumi.com"):
        if not (environ.get("PULUMI_CONFIG_PASSPHRASE") or environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")):
            raise CiConfigError(
                f"backend {backend} keeps secrets with a passphrase: set PULUMI_CONFIG_PASSPHRASE (a CI secret)"
            )
    elif not backend and not environ.get("PULUMI_ACCESS_TOKEN"):
        raise CiConfigError("set PULUMI_ACCESS_TOKEN (Pulumi Cloud) or PULUMI_BACKEND_URL + PULUMI_CONFIG_PASSPHRASE")

    calls: list[Call] = []
    if backend:
        calls.append(Call(("pulumi", "login", backend, "--non-interactive")))
    calls.append(Call(("pulumi", "stack", "select", "--create", stack, "--non-interactive")))
    calls.append(Call(("pulumi", "config", "set", "--secret", "--stack", stack, "infinitetalk:runpodApiKey"),
                      environ["RUNPOD_API_KEY"]))
    if environ.get("S3_ACCESS_KEY") and environ.get("S3_SECRET_KEY"):
        calls.append(Call(("pulumi", "config", "set", "--secret", "--stack", stack, "infinitetalk:s3AccessKey"),
                          environ["S3_ACCESS_KEY"]))
        calls.append(Call(("pulumi", "config", "set", "--secret", "--stack", stack, "infinitetalk:s3SecretKey"),
                          environ["S3_SECRET_KEY"]))
    image = environ.get("IMAGE_TAG", "")
    if image:
        try:
            check_image(image)
        except ImageRefError as exc:
            raise CiConfigError(f"IMAGE_TAG: {exc}") from None
        calls.append(Call(("pulumi", "config", "set", "--stack", stack, "infinitetalk:image", image)))
    if command == "preview":
        calls.append(Call(("pulumi", "preview", "--non-interactive", "--diff", "--refresh", "--stack", stack)))
    else:
        calls.append(Call(("pulumi", "up", "--yes", "--non-interactive", "--refresh", "--skip-preview", "--stack", stack)))
    python = environ.get("PULUMI_PYTHON_CMD") or sys.executable
    return Plan(tuple(calls), {**environ, "PULUMI_PYTHON_CMD": python, "PULUMI_SKIP_UPDATE_CHECK": "true"})


def run(p: Plan, cwd: Path) -> int:
    for call in p.calls:
        done = subprocess.run(list(call.argv), input=call.stdin, text=True, cwd=cwd, env=dict(p.env))
        if done.returncode != 0:
            print(f"ci/pulumi.sh: `{' '.join(call.argv[:4])} ...` failed ({done.returncode})", file=sys.stderr)
            return done.returncode
    return 0


def main(argv: Sequence[str]) -> int:
    repo = Path(__file__).resolve().parents[1]
    try:
        p = plan(argv[0] if argv else "", os.environ, repo)
    except CiConfigError as exc:
        print(f"ci/pulumi.sh: {exc}", file=sys.stderr)
        return 2
    return run(p, repo)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
