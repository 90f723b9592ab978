"""client/ui.py: its form logic, and the whole UI in Debian's chromium driven by Playwright.

The browser tests start the UI from the client environment (.venv-client, gradio) as a
subprocess pointed at the local endpoint running the real handler with the tiny model; they
upload an image and audio, submit, watch the progress, and read the result video's duration in
the page. Screenshots are kept under test-artifacts/.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from client.api import PollPolicy, RunpodEndpointClient
from client.ui import collect_params, estimate_markdown, follow_job
from tests.client.conftest import CLIENT_PYTHON, ENDPOINT_ID, MEDIA, REPO_ROOT
from tests.processes import stop_process
from tests.worker.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ---------------------------------------------------------------------------------------
# Form logic (no gradio needed)


def test_collect_params_leaves_empty_fields_to_the_defaults() -> None:
    p = collect_params(prompt="", size="infinitetalk-480", preset="turbo", sample_steps=None, seed=None,
                       use_apg="preset default", use_teacache="on", bbox1="1, 2, 30 40", local=True)
    assert p == {"size": "infinitetalk-480", "sampler": "turbo", "use_teacache": True,
                 "bbox": {"person1": [1.0, 2.0, 30.0, 40.0]}, "output": {"target": "inline"}}
    remote = collect_params(sample_steps=12.0, seed=5, text_guide_scale="4.5", guidance_every="2", output_target="auto",
                            local=False)
    assert remote == {"sample_steps": 12, "seed": 5, "text_guide_scale": 4.5, "guidance_every": 2}
    assert collect_params(output_target="s3", local=True)["output"] == {"target": "s3"}
    with pytest.raises(ValueError):
        collect_params(bbox1="1 2 3")


def test_estimate_markdown() -> None:
    assert "add audio" in estimate_markdown(tier="h100_80", preset="quality", size=None, mode=None, audio1=None)
    md = estimate_markdown(tier="a100_80", preset="turbo", size="infinitetalk-480", mode="clip",
                           audio1=str(MEDIA / "speech_person1.wav"))
    assert "GPU-min on a100_80" in md and "$" in md
    reused = estimate_markdown(tier="a100_80", preset="turbo", size="infinitetalk-480", mode="clip",
                               audio1=str(MEDIA / "speech_person1.wav"), guidance_every="2")
    assert "guidance every 2 steps" in reused
    two = estimate_markdown(tier="h100_80", preset="turbo", size=None, mode="streaming",
                            audio1=str(MEDIA / "speech_person1.wav"), audio2=str(MEDIA / "speech_person2.wav"))
    assert "s of audio" in two
    assert "GPU-min" in estimate_markdown(tier="h100_80", preset=None, size=None, mode=None, audio1=None,
                                          tts_text="(s1) hello there (s2) hi")


def test_follow_job_reports_progress_and_an_unreachable_result(fixture_endpoint, tmp_path: Path) -> None:
    with RunpodEndpointClient(base_url=fixture_endpoint.url, endpoint_id=ENDPOINT_ID) as c:
        ups = [(u.status, u.percent, u.final, u.error) for u in
               follow_job(c, {"mode": "progress", "steps": 3, "step_s": 0.4}, tmp_path, poll=PollPolicy(initial_s=0.2))]
    assert ups[0][0] == "SUBMITTING"
    percents = [p for s, p, *_ in ups if s == "IN_PROGRESS"]
    assert percents and percents == sorted(percents)
    status, _, final, error = ups[-1]
    assert status == "COMPLETED" and final and error is not None and error.code == "E_RESULT_UNREACHABLE"


def test_follow_job_saves_the_inline_video(tiny_endpoint, tmp_path: Path) -> None:
    from client.payload import MediaSpec, build_job_input

    job, _ = build_job_input(MediaSpec(image=MEDIA / "portrait.png", audio1=MEDIA / "speech_person1.wav"),
                             collect_params(preset="turbo", local=True))
    with RunpodEndpointClient(base_url=tiny_endpoint.url) as c:
        last = list(follow_job(c, job, tmp_path, poll=PollPolicy(initial_s=0.3)))[-1]
    assert last.error is None and last.video and Path(last.video).read_bytes()[4:8] == b"ftyp"
    assert any(line.startswith("done: duration_s 3.24") for line in last.log)


# ---------------------------------------------------------------------------------------
# The browser


@pytest.fixture(scope="module")
def ui_url(tiny_endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not CLIENT_PYTHON.exists():
        pytest.skip("the client environment .venv-client (gradio) is not installed")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    pytest.importorskip("playwright.sync_api")
    port = free_port()
    tmp = tmp_path_factory.mktemp("ui")
    log = (tmp / "ui.log").open("w")
    env = {**os.environ, "INFINITETALK_UI_POLL_S": "0.5", "INFINITETALK_UI_OUT": str(tmp / "out"),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    for k in ("RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID", "S3_BUCKET"):
        env.pop(k, None)
    proc = subprocess.Popen([str(CLIENT_PYTHON), "-m", "client", "ui", "--port", str(port),
                             "--base-url", tiny_endpoint.url], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"UI exited: {(tmp / 'ui.log').read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("UI did not start within 90 s")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def page(ui_url: str, request: pytest.FixtureRequest, artifacts_dir: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="chromium-profile-"),
                                                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                                                    viewport={"width": 1280, "height": 1600})
        try:
            pg = ctx.new_page()
            pg.set_default_timeout(30_000)
            pg.goto(ui_url)
            pg.wait_for_selector("#submit")
            yield pg
            rep = getattr(request.node, "rep_call", None)
            if rep is not None and rep.failed:
                pg.screenshot(path=str(artifacts_dir / f"{request.node.name}-failed.png"), full_page=True)
        finally:
            ctx.close()


def _upload_inputs(page) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(MEDIA / "portrait.png"))
    page.locator("#input-audio1 input[type=file]").set_input_files(str(MEDIA / "speech_person1.wav"))
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('GPU-min')")


def _watch_progress(page, until: str, timeout_s: float = 120) -> list[tuple[str, float]]:
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        box = page.locator("#job-progress-box")
        st, pc = box.get_attribute("data-status"), box.get_attribute("data-percent")
        if st and (not seen or seen[-1] != (st, float(pc))):
            seen.append((st, float(pc)))
        if st == until or (st in ("COMPLETED", "FAILED", "CANCELLED") and until != "IN_PROGRESS"):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"no {until} within {timeout_s} s; saw {seen}")


def test_browser_upload_submit_progress_and_video(page, artifacts_dir: Path) -> None:
    _upload_inputs(page)
    estimate = page.locator("#estimate").inner_text()
    assert "quality" not in estimate or "40 steps" in estimate
    assert "GPU-min on h100_80" in estimate and "$" in estimate
    page.locator("#submit").click()
    seen = _watch_progress(page, "COMPLETED")
    assert seen[-1] == ("COMPLETED", 100.0), seen
    running = [p for s, p in seen if s == "IN_PROGRESS"]
    assert running, f"no progress seen: {seen}"
    assert any(0 < p < 100 for p in running), seen
    page.wait_for_function(
        "(() => { const v = document.querySelector('#result-video video');"
        " return v && v.readyState >= 1 && v.duration > 0; })()")
    duration = page.evaluate("document.querySelector('#result-video video').duration")
    src = page.evaluate("document.querySelector('#result-video video').currentSrc")
    assert duration == pytest.approx(3.24, abs=0.15)
    assert src.endswith(".mp4")
    stages = page.locator("#stages textarea").input_value()
    assert "sampling" in stages and "done: duration_s 3.24" in stages
    assert page.locator("#result-file a").count() >= 1  # the download link
    assert page.locator("#job-error").inner_text().strip() == ""
    page.screenshot(path=str(artifacts_dir / "ui-completed.png"), full_page=True)


def test_browser_video_toggle_and_cancel(page, artifacts_dir: Path) -> None:
    page.get_by_label("video", exact=True).check()
    page.wait_for_selector("#input-video", state="visible")
    assert not page.locator("#input-image").is_visible()
    page.get_by_label("image", exact=True).check()
    _upload_inputs(page)
    page.get_by_text("Overrides (empty").click()
    page.locator("#steps textarea, #steps input").first.fill("100")  # long enough to cancel while it runs
    page.locator("#submit").click()
    _watch_progress(page, "IN_PROGRESS")
    page.wait_for_function("document.querySelector('#job-id textarea, #job-id input').value.length > 0")
    page.locator("#cancel").click()
    seen = _watch_progress(page, "CANCELLED", timeout_s=60)
    assert seen[-1][0] == "CANCELLED"
    page.wait_for_function("document.querySelector('#job-error').innerText.includes('E_CANCELLED')")
    page.screenshot(path=str(artifacts_dir / "ui-cancelled.png"), full_page=True)


def test_browser_worker_error_shows_code_and_hint(page, artifacts_dir: Path) -> None:
    # A voice this worker does not have: the worker fails the job with a code and a hint listing its voices.
    page.locator("#input-image input[type=file]").set_input_files(str(MEDIA / "portrait.png"))
    page.get_by_label("text to speech", exact=True).check()
    page.wait_for_selector("#input-audio1", state="hidden")
    page.get_by_label("TTS text (mark two speakers (s1) / (s2))").fill("Hello there.")
    page.get_by_label("voice, speaker 1 (optional)").fill("xx_nobody")
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('GPU-min')")
    page.locator("#submit").click()
    seen = _watch_progress(page, "FAILED", timeout_s=120)
    assert seen[-1][0] == "FAILED"
    page.wait_for_function("document.querySelector('#job-error').innerText.includes('E_INPUT_VALIDATION')")
    text = page.locator("#job-error").inner_text()
    assert "xx_nobody" in text and "Hint:" in text and "af_heart" in text
    page.screenshot(path=str(artifacts_dir / "ui-error.png"), full_page=True)
