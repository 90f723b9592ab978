"""Fixtures for worker tests: a real moto S3 server running as a subprocess.

Why a subprocess and not `mock_aws`: the code under test makes real HTTP requests
(boto3, presigned URLs fetched with httpx), so the server must listen on a socket.

- `moto_server` (session): one shared server; `moto_s3` (function) resets its state first.
- `start_moto_server(**env)`: a dedicated server for tests that change server-wide
  settings (IAM auth enforcement, S3 part-size limits); use it as a context manager.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import boto3
import httpx
import pytest
from botocore.config import Config

from tests.processes import stop_process
from worker.storage.base import S3Settings

TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoServer:
    endpoint: str
    proc: subprocess.Popen

    def client(self, access_key: str = TEST_ACCESS_KEY, secret_key: str = TEST_SECRET_KEY, service: str = "s3"):
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    def settings(self, bucket: str = "results", **kw) -> S3Settings:
        base = dict(
            bucket=bucket,
            endpoint_url=self.endpoint,
            region="us-east-1",
            access_key=TEST_ACCESS_KEY,
            secret_key=TEST_SECRET_KEY,
            addressing_style="path",
            attempts=1,
        )
        base.update(kw)
        return S3Settings(**base)

    def reset(self) -> None:
        httpx.post(self.endpoint + "/moto-api/reset", timeout=10).raise_for_status()

    def enforce_auth(self) -> None:
        """From now on every request needs valid IAM credentials (moto's reset-auth)."""
        httpx.post(self.endpoint + "/moto-api/reset-auth", content=b"0", timeout=10).raise_for_status()


@contextlib.contextmanager
def start_moto_server(**env: str) -> Iterator[MotoServer]:
    port = free_port()
    penv = dict(os.environ)
    penv.update({"AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY})
    penv.update(env)
    log = open(os.devnull, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=penv,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}")
            try:
                if httpx.get(endpoint + "/moto-api/", timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("moto server did not start within 30 s")
            time.sleep(0.1)
        yield MotoServer(endpoint=endpoint, proc=proc)
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with start_moto_server() as srv:
        yield srv


@pytest.fixture()
def moto_s3(moto_server: MotoServer) -> MotoServer:
    moto_server.reset()
    return moto_server
