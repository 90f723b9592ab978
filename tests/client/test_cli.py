"""client/cli.py driven like a user: `main(argv)` against the local endpoint, through the fault proxy.

The end-to-end tests run the real handler with the tiny model (tiny_endpoint); status/cancel and
the failure paths use the fixture handlers, which answer in milliseconds.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import av
import pytest

from client.api import RunpodEndpointClient
from client.cli import main
from tests.client.conftest import CLIENT_PYTHON, ENDPOINT_ID, MEDIA, REPO_ROOT
from tests.client.faultproxy import Fault, FaultProxy
from tests.worker.conftest import free_port

MEDIA_ARGS = ["--image", str(MEDIA / "portrait.png"), "--audio", str(MEDIA / "speech_person1.wav")]


def _duration(path: Path) -> float:
    with av.open(str(path)) as f:
        return float(f.duration / av.time_base)


def test_submit_follows_through_429_and_dropped_connections(tiny_proxy: FaultProxy, tmp_path: Path, capsys) -> None:
    tiny_proxy.add("/run", Fault.throttle(retry_after="1"))
    tiny_proxy.add("/status/", Fault.drop(), times=2)
    rc = main(["submit", "--base-url", tiny_proxy.url, "--endpoint-id", ENDPOINT_ID, *MEDIA_ARGS, "--preset", "turbo",
               "--seed", "7", "--poll-interval", "0.3", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    video = Path(out.strip().splitlines()[-1])
    assert video.parent == tmp_path and video.suffix == ".mp4"
    assert video.read_bytes()[4:8] == b"ftyp"
    assert _duration(video) == pytest.approx(3.71, abs=0.15)  # the whole speech: streaming is the default
    assert "image: inline" in err and "audio.person1: inline" in err
    assert "] 100.0% done" in err and "sampling" in err and "COMPLETED" in err
    assert tiny_proxy.count("/run", "throttle") == 1 and tiny_proxy.count("/status/", "drop") == 2


def test_submit_sync_uses_runsync(tiny_proxy: FaultProxy, tmp_path: Path, capsys) -> None:
    rc = main(["submit", "--sync", "--base-url", tiny_proxy.url, "--endpoint-id", ENDPOINT_ID, *MEDIA_ARGS,
               "--preset", "turbo", "--output-target", "inline", "--output-dir", str(tmp_path), "--quiet", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.strip().splitlines()
    final = json.loads(lines[0])
    assert final["status"] == "COMPLETED" and final["output"]["storage"] == "inline"
    assert Path(lines[-1]).read_bytes()[4:8] == b"ftyp"
    assert tiny_proxy.count("/runsync") == 1 and tiny_proxy.count("/status/") == 0


def test_worker_error_is_shown_with_code_and_hint(tiny_endpoint, tmp_path: Path, capsys) -> None:
    rc = main(["submit", "--base-url", tiny_endpoint.url, "--image", "https://127.0.0.1:9/face.png",
               "--audio", str(MEDIA / "speech_person1.wav"), "--poll-interval", "0.3", "--output-dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert rc == 1
    assert "FAILED: E_" in err and "hint:" in err


def test_status_and_cancel(proxy: FaultProxy, capsys) -> None:
    with RunpodEndpointClient(base_url=proxy.url, endpoint_id=ENDPOINT_ID) as c:
        job = c.run({"mode": "sleep", "seconds": 30})
    conn = ["--base-url", proxy.url, "--endpoint-id", ENDPOINT_ID]
    assert main(["status", job.id, *conn]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job.id
    proxy.add("/cancel/", Fault.throttle(retry_after="0"))
    assert main(["cancel", job.id, *conn]) == 0
    assert f"job {job.id} CANCELLED" in capsys.readouterr().out
    assert main(["status", job.id, "--wait", "--quiet", *conn]) == 1
    err = capsys.readouterr().err
    assert f"job {job.id} CANCELLED: stopped before it finished" in err and "E_CANCELLED" not in err


def test_no_wait_prints_the_job_id(proxy: FaultProxy, capsys) -> None:
    rc = main(["submit", "--no-wait", "--base-url", proxy.url, "--endpoint-id", ENDPOINT_ID, *MEDIA_ARGS, "--quiet"])
    out = capsys.readouterr().out.strip()
    assert rc == 0 and out.endswith("-u1")


def test_unreachable_endpoint_exits_3(capsys) -> None:
    rc = main(["submit", "--base-url", f"http://127.0.0.1:{free_port()}", "--retries", "2", *MEDIA_ARGS, "--quiet"])
    assert rc == 3 and "cannot reach" in capsys.readouterr().err


def test_usage_errors(capsys, monkeypatch) -> None:
    monkeypatch.delenv("RUNPOD_ENDPOINT_ID", raising=False)
    monkeypatch.delenv("INFINITETALK_BASE_URL", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["submit", *MEDIA_ARGS])
    assert exc.value.code == 2
    rc = main(["submit", "--base-url", "http://127.0.0.1:9", *MEDIA_ARGS, "--frame-num", "80"])
    assert rc == 2 and "frame_num" in capsys.readouterr().err


def test_estimate_command(capsys) -> None:
    assert main(["estimate", "--audio", str(MEDIA / "speech_person1.wav"), "--preset", "turbo"]) == 0
    assert "GPU time on h100_80" in capsys.readouterr().out
    assert main(["estimate", "--audio-seconds", "3", "--preset", "turbo", "--guidance-every", "2"]) == 0
    assert "guidance every 2 steps" in capsys.readouterr().out
    assert main(["estimate", "--audio-seconds", "3", "--guidance-every", "0"]) == 2
    assert main(["estimate", "--audio-seconds", "3", "--tier", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "guidance_every must be >= 1" in err and "unknown GPU tier 'tpu'" in err and "Traceback" not in err
    for bad in ("0", "-3"):
        assert main(["estimate", "--audio-seconds", bad]) == 2
        assert "--audio-seconds must be more than 0" in capsys.readouterr().err


def test_bad_local_files_exit_2_before_anything_is_sent(tmp_path: Path, capsys) -> None:
    """Sniffed from content on this machine: nothing reaches the (unreachable) endpoint, so 2, never 3."""
    unreachable = ["--base-url", f"http://127.0.0.1:{free_port()}", "--retries", "1"]
    text = tmp_path / "speech.wav"
    text.write_text("this is a text file, not speech\n" * 10)
    rc = main(["submit", *unreachable, "--image", str(MEDIA / "portrait.png"), "--audio", str(text)])
    err = capsys.readouterr().err
    assert rc == 2 and "audio.person1: speech.wav is not an image, audio or video file" in err, err
    assert "hint: Give audio.person1 a WAV" in err
    rc = main(["submit", *unreachable, "--image", str(MEDIA / "speech_person1.wav"), "--audio", str(MEDIA / "speech_person1.wav")])
    err = capsys.readouterr().err
    assert rc == 2 and "image: speech_person1.wav is a audio" not in err and "image: speech_person1.wav is an audio file" in err
    # a mistyped local path is not sent as a path on the worker's volume
    rc = main(["submit", *unreachable, "--image", str(tmp_path / "portrait.pgn"), "--audio", str(MEDIA / "speech_person1.wav")])
    err = capsys.readouterr().err
    assert rc == 2 and "image: no such file" in err and "/runpod-volume/" in err
    # a job the contract refuses: the worker's words, the field named, a hint
    rc = main(["submit", *unreachable, *MEDIA_ARGS, "--steps", "500"])
    err = capsys.readouterr().err
    assert rc == 2 and "sample_steps: must be at most 100 (got 500)" in err and "hint: Change sample_steps" in err
    assert "Input should" not in err and "Value error" not in err and "Traceback" not in err


def test_python_m_client_in_the_client_env_imports_no_worker_runtime() -> None:
    if not CLIENT_PYTHON.exists():
        pytest.skip("the client environment .venv-client is not installed")
    out = subprocess.run([str(CLIENT_PYTHON), "-m", "client", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "submit" in out.stdout
    probe = ("import sys, client.api, client.payload, client.estimate, client.cli, client.ui; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'runpod', 'torch', 'gradio', 'boto3'}))")
    got = subprocess.run([str(CLIENT_PYTHON), "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "[]"  # gradio only when the UI is built, boto3 only for an upload


def test_submit_a_payload_file_with_relative_media(tiny_endpoint, tmp_path: Path, capsys) -> None:
    example = REPO_ROOT / "examples" / "single_image.json"
    rc = main(["submit", "--base-url", tiny_endpoint.url, "--payload", str(example), "--preset", "turbo",
               "--poll-interval", "0.3", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "audio.person1: inline" in err and "image: inline" in err
    video = Path(out.strip().splitlines()[-1])
    assert video.read_bytes()[4:8] == b"ftyp"
    assert "seed=42" in err  # the payload's own parameters were kept


def test_submit_video_dubbing_sync(tiny_endpoint, tmp_path: Path, capsys) -> None:
    rc = main(["submit", "--sync", "--base-url", tiny_endpoint.url, "--video", str(MEDIA / "reference.mp4"),
               "--audio", str(MEDIA / "speech_person1.wav"), "--preset", "turbo", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "video: inline" in err and "video/mp4" in err
    assert _duration(Path(out.strip().splitlines()[-1])) > 1.0


def test_infinitetalk_ui_starts_from_the_readme_environment(tmp_path: Path) -> None:
    """What this proves: after the README's set-up (scripts/test.sh makes .venv and .venv-client), the
    `infinitetalk` console script of .venv -- the one the README's commands use -- starts the UI with no
    other command: it hands over to .venv-client's Python (gradio lives there) and the page answers HTTP.
    What it does not prove: that a fresh clone's bootstrap succeeds (too slow to repeat here; CI's
    .ci/run does that from a clean checkout)."""
    import time

    import httpx

    from tests.processes import stop_process

    assert CLIENT_PYTHON.exists(), "the README's set-up (scripts/test.sh) makes .venv-client"
    entry = REPO_ROOT / ".venv" / "bin" / "infinitetalk"
    assert entry.exists()
    port = free_port()
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen([str(entry), "ui", "--port", str(port)], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                           "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        deadline = time.monotonic() + 120
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        text = (tmp_path / "ui.log").read_text()
        assert answer is not None, f"the UI did not answer (exit {proc.poll()}): {text[-2000:]}"
        assert answer.status_code == 200 and "gradio" in answer.text.lower()
        assert "make a client environment" not in text and "Traceback" not in text
    finally:
        stop_process(proc)
        log.close()


def test_the_client_environment_offers_only_what_it_can_run() -> None:
    """.venv-client has no Hydra, torch or runpod: its console script hides run/serve/weights and answers
    them with one line (not ModuleNotFoundError)."""
    entry = REPO_ROOT / ".venv-client" / "bin" / "infinitetalk"
    assert entry.exists(), "the README's set-up (scripts/test.sh) makes .venv-client"
    helped = subprocess.run([str(entry), "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    listed = helped.stdout.split("positional arguments:")[1].split("options:")[0]
    assert "submit" in listed and "ui" in listed and "schema" in listed
    for cmd in ("run", "serve", "weights"):
        assert not re.search(rf"^\s+{cmd}\s", listed, re.M), helped.stdout
        got = subprocess.run([str(entry), cmd, "examples/single_image.json"], capture_output=True, text=True,
                             timeout=60, cwd=REPO_ROOT)
        assert got.returncode == 2 and "ModuleNotFoundError" not in got.stderr and "Traceback" not in got.stderr
        assert len(got.stderr.strip().splitlines()) == 1 and "needs the worker environment" in got.stderr
    schema = subprocess.run([str(entry), "schema"], capture_output=True, text=True, timeout=60)
    assert schema.returncode == 0 and json.loads(schema.stdout)["title"] == "InfiniteTalk job input"


def test_submit_prints_the_preview_and_follows_into_a_playable_file(tiny_endpoint, tmp_path: Path, capsys) -> None:
    import numpy as np
    import soundfile as sf

    wave, rate = sf.read(MEDIA / "speech_person1.wav", dtype="float32")
    sf.write(tmp_path / "long.wav", np.tile(wave, 4)[: 12 * rate], rate)  # 12 s: 4 chunks
    follow = tmp_path / "watch.ts"
    rc = main(["submit", "--base-url", tiny_endpoint.url, "--endpoint-id", ENDPOINT_ID, "--image",
               str(MEDIA / "portrait.png"), "--audio", str(tmp_path / "long.wav"), "--preset", "turbo",
               "--output-target", "local", "--follow", str(follow), "--poll-interval", "0.2",
               "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "preview (HLS, grows while the job renders): " in err
    counts = [int(n) for n in re.findall(r"following into \S+: (\d+) segments", err)]
    assert counts and counts[0] < counts[-1] >= 4 and counts == sorted(counts)  # segment by segment
    assert err.index("preview (HLS") < err.index("COMPLETED")  # known before the job ended
    with av.open(str(follow)) as f:
        followed = sum(1 for _ in f.decode(video=0))
    with av.open(out.strip().splitlines()[-1]) as f:
        final = sum(1 for _ in f.decode(video=0))
    assert followed == final == 300
