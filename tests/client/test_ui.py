"""client/ui.py: its form logic, and the whole UI in Debian's chromium driven by Playwright.

The browser tests start the UI from the client environment (.venv-client, gradio) as a
subprocess pointed at the local endpoint running the real handler with the tiny model; they
upload an image and audio, submit, watch the progress, and read the result video's duration in
the page. Screenshots are kept under test-artifacts/.
"""
from __future__ import annotations

import os
import subprocess
import wave
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


_LISTENERS = """
from client.ui import build_app
for fn in build_app(None).fns.values():
    print(fn.name, fn.trigger_mode, fn.concurrency_limit, len(fn.targets))
"""


@pytest.mark.skipif(not CLIENT_PYTHON.exists(), reason="no .venv-client (scripts/bootstrap.sh makes it)")
def test_form_listeners_show_the_latest_values() -> None:
    """The estimate and the upload checks follow many fields. One listener each, run one at a time and once more
    with the latest values: separate listeners ran side by side and a slow, older one could overwrite the page
    with a stale answer (seen in CI: the estimate never showed the text typed last)."""
    out = subprocess.run([str(CLIENT_PYTHON), "-c", _LISTENERS], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split("\n")
    rows = [line.split() for line in out if line.startswith(("on_estimate ", "on_files "))]
    by_name = {r[0]: r for r in rows}
    assert sorted(r[0] for r in rows) == ["on_estimate", "on_files"], rows  # one listener each
    assert by_name["on_estimate"][1:] == ["always_last", "1", "14"]
    assert by_name["on_files"][1:] == ["always_last", "1", "5"]  # setup, image, video, audio1, audio2


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
    assert md.startswith("Estimate (3.7 s of audio)") and "a100_80" in md and "$" in md
    reused = estimate_markdown(tier="a100_80", preset="turbo", size="infinitetalk-480", mode="clip",
                               audio1=str(MEDIA / "speech_person1.wav"), guidance_every="2")
    assert "guidance every 2 steps" in reused
    two = estimate_markdown(tier="h100_80", preset="turbo", size=None, mode="streaming",
                            audio1=str(MEDIA / "speech_person1.wav"), audio2=str(MEDIA / "speech_person2.wav"))
    assert "s of audio" in two
    assert "$" in estimate_markdown(tier="h100_80", preset=None, size=None, mode=None, audio1=None,
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


def test_follow_job_shows_the_queue_while_workers_are_busy(fixture_endpoint, tmp_path: Path) -> None:
    with RunpodEndpointClient(base_url=fixture_endpoint.url, endpoint_id=ENDPOINT_ID) as c:
        busy = [c.run({"mode": "sleep", "seconds": 2.5}) for _ in range(2)]  # both workers taken
        notes, rows = [], []
        for u in follow_job(c, {"mode": "echo", "value": 1}, tmp_path, poll=PollPolicy(initial_s=0.2)):
            notes.append(u.stages.queue_note)
            rows.append(u.stages.to_html())
        for j in busy:
            c.wait(j.id, policy=PollPolicy(initial_s=0.2))
    assert any("job queued on the endpoint" in n or "jobs queued on the endpoint" in n for n in notes), notes
    assert any('data-stage="queue" data-state="running"' in r and "queued on the endpoint" in r for r in rows)
    assert u.status == "COMPLETED"


def test_follow_job_saves_the_inline_video(tiny_endpoint, tmp_path: Path) -> None:
    from client.payload import MediaSpec, build_job_input

    job, _ = build_job_input(MediaSpec(image=MEDIA / "portrait.png", audio1=MEDIA / "speech_person1.wav"),
                             collect_params(preset="turbo", mode="clip", local=True))
    with RunpodEndpointClient(base_url=tiny_endpoint.url) as c:
        last = list(follow_job(c, job, tmp_path, poll=PollPolicy(initial_s=0.3)))[-1]
        again = [(u.status, u.job_id, u.video) for u in follow_job(c, None, tmp_path / "again", job_id=last.job_id)]
    assert last.error is None and last.video and Path(last.video).read_bytes()[4:8] == b"ftyp"
    assert any(line.startswith("done: duration_s 3.24") for line in last.log)
    assert last.stages.rows()[-1][1] == "done" and "sampling" in [r[0] for r in last.stages.rows()]
    assert "3.24 s" in last.result_markdown()
    # clip on 3.71 s of speech cuts 0.47 s: the page says so (the worker's `truncated`, `truncated_s`).
    assert last.output.get("truncated") is True and "Shortened" in last.result_markdown()
    assert "0.5 s dropped" in last.result_markdown()
    # Re-attaching by id to a finished job fetches its result again without submitting anything.
    assert again[0][0] == "ATTACHING" and again[-1][:2] == ("COMPLETED", last.job_id)
    assert Path(again[-1][2]).read_bytes() == Path(last.video).read_bytes()


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


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()
    finally:
        pw.stop()


@pytest.fixture
def page(ui_url: str, browser, request: pytest.FixtureRequest, artifacts_dir: Path):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1600})
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
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('s of audio')", timeout=90_000)


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


def _visible(page, elem_id: str) -> bool:
    return page.locator(f"#{elem_id}").is_visible()


def _choose_setup(page, label: str) -> None:
    page.locator("#setup").get_by_label(label, exact=True).check()


def _video_duration(page) -> float:
    page.wait_for_function(
        "(() => { const v = document.querySelector('#result-video video');"
        " return v && v.readyState >= 1 && v.duration > 0; })()", timeout=60_000)
    return float(page.evaluate("document.querySelector('#result-video video').duration"))


def _no_traceback(page) -> None:
    body = page.locator("body").inner_text()
    for bad in ("Traceback", "/tmp/", "gradio/", "Exception", "Error: cannot identify"):
        assert bad not in body, f"{bad!r} shown to the user"


def test_browser_setup_selector_hides_what_does_not_apply(page, artifacts_dir: Path) -> None:
    # Default: one speaker, audio file, image.
    assert _visible(page, "input-image") and _visible(page, "input-audio1")
    for hidden in ("input-video", "input-audio2", "audio-type", "tts-text", "voice1", "voice2", "box-target"):
        assert not _visible(page, hidden), hidden
    assert not _visible(page, "cancel"), "Cancel shows only while a job runs"
    _choose_setup(page, "Image · two speakers · audio files")
    page.wait_for_selector("#input-audio2", state="visible")
    assert _visible(page, "audio-type") and _visible(page, "box-target") and not _visible(page, "tts-text")
    _choose_setup(page, "Image · one speaker · text to speech")
    page.wait_for_selector("#tts-text", state="visible")
    assert not _visible(page, "input-audio1") and not _visible(page, "input-audio2")
    assert _visible(page, "voice1") and not _visible(page, "voice2") and not _visible(page, "box-target")
    page.locator("#voice1 input").click()
    options = [o.replace("✓", "").strip() for o in page.locator("[role=option]").all_inner_texts()]
    assert "af_heart" in options and "am_michael" in options and "bf_emma" in options
    page.keyboard.press("Escape")
    _choose_setup(page, "Image · two speakers · text to speech")
    page.wait_for_selector("#voice2", state="visible")
    _choose_setup(page, "Video dubbing · audio file")
    page.wait_for_selector("#input-video", state="visible")
    assert not _visible(page, "input-image") and _visible(page, "input-audio1") and not _visible(page, "voice1")
    page.screenshot(path=str(artifacts_dir / "ui-setup-video.png"), full_page=True)


def test_browser_bad_uploads_get_a_friendly_message(page, tmp_path: Path, artifacts_dir: Path) -> None:
    not_image = tmp_path / "portrait.png"
    not_image.write_text("hello, I am a text file with a picture's name\n")
    page.locator("#input-image input[type=file]").set_input_files(str(not_image))
    page.wait_for_function("document.querySelector('#input-check').innerText.includes('Image:')")
    msg = page.locator("#input-check").inner_text()
    assert "portrait.png is not a file type this page knows" in msg and "Upload an image" in msg
    not_audio = tmp_path / "speech.wav"
    not_audio.write_text("RIFF? no: plain text pretending to be a wave file\n")
    page.locator("#input-audio1 input[type=file]").set_input_files(str(not_audio))
    page.wait_for_function("document.querySelector('#input-check').innerText.includes('Audio, person 1:')")
    _no_traceback(page)
    page.locator("#submit").click()
    page.wait_for_function("document.querySelector('#job-error').innerText.includes('portrait.png')")
    err = page.locator("#job-error").inner_text()
    assert err.startswith("Not sent.") and "speech.wav" in err and "Hint:" in err
    assert page.locator("#job-id input, #job-id textarea").first.input_value() == "", "nothing was submitted"
    assert page.locator("#submit").is_enabled()
    _no_traceback(page)
    page.screenshot(path=str(artifacts_dir / "ui-bad-upload.png"), full_page=True)
    # a setup without an image: the image's warning goes, the audio's stays
    _choose_setup(page, "Video dubbing · audio file")
    page.wait_for_function("!document.querySelector('#input-check').innerText.includes('Image:')")
    assert "Audio, person 1:" in page.locator("#input-check").inner_text()


def _ten_second_wav(path: Path) -> Path:
    with wave.open(str(MEDIA / "speech_person1.wav"), "rb") as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    want = params.framerate * 10 * params.sampwidth * params.nchannels
    data = (frames * (want // len(frames) + 1))[:want]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(params.nchannels)
        out.setsampwidth(params.sampwidth)
        out.setframerate(params.framerate)
        out.writeframes(data)
    return path


def test_browser_ten_second_audio_by_default_with_locked_generate_and_history(
        page, tmp_path: Path, artifacts_dir: Path) -> None:
    """Nothing but the two uploads set: the whole 10 s of speech comes back; the history keeps it over a reload."""
    page.locator("#input-image input[type=file]").set_input_files(str(MEDIA / "portrait.png"))
    page.locator("#input-audio1 input[type=file]").set_input_files(str(_ten_second_wav(tmp_path / "ten.wav")))
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('10.0 s of audio')")
    # the upload checks ran on both files (they run one at a time, the last with both) and found nothing
    page.wait_for_function("document.querySelector('#input-check').innerText.includes('Uploads checked')")
    assert "⚠" not in page.locator("#input-check").inner_text()
    page.locator("#submit").click()
    seen = _watch_progress(page, "IN_PROGRESS")
    assert not page.locator("#submit").is_enabled(), "Generate stays disabled while the job runs"
    assert _visible(page, "cancel")
    page.wait_for_selector("#stage-list li[data-state=running]")
    seen += _watch_progress(page, "COMPLETED", timeout_s=600)
    assert seen[-1] == ("COMPLETED", 100.0), seen
    running = [p for s, p in seen if s == "IN_PROGRESS"]
    assert any(0 < p < 100 for p in running), seen
    duration = _video_duration(page)
    assert duration == pytest.approx(10.0, abs=0.08), "the default renders the whole speech"
    page.wait_for_function("document.querySelector('#submit') && !document.querySelector('#submit').disabled")
    assert not _visible(page, "cancel")
    stages = page.locator("#stage-list").inner_text()
    assert "generating frames" in stages and "writing the MP4" in stages
    assert "elapsed" in page.locator("#stage-head").inner_text()
    assert page.locator("#result-file a").count() >= 1  # Download beside the player
    player, dl = page.locator("#result-video").bounding_box(), page.locator("#result-file").bounding_box()
    assert player["height"] <= 480 and dl["y"] < player["y"] + player["height"], "Download sits beside the player"
    job = page.locator("#job-id input, #job-id textarea").first.input_value()
    page.wait_for_selector(f"#history tr[data-job='{job}'][data-status=COMPLETED]")
    page.screenshot(path=str(artifacts_dir / "ui-ten-seconds.png"), full_page=True)

    page.reload()
    page.wait_for_selector(f"#history tr[data-job='{job}'][data-status=COMPLETED]")
    row = page.locator(f"#history tr[data-job='{job}']").inner_text()
    assert "▶ playable" in row and "$" in row
    page.locator("#history-pick input").fill(job)
    page.locator("#history-pick input").press("Enter")
    page.locator("#history-open").click()
    assert _video_duration(page) == pytest.approx(10.0, abs=0.08)
    page.screenshot(path=str(artifacts_dir / "ui-history-after-reload.png"), full_page=True)
    # Re-submit with edits: the job's form comes back (uploads included while their copies exist).
    page.locator("#prompt textarea").fill("")
    page.locator("#history-edit").click()
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('10.0 s of audio')")
    assert "ten.wav" in page.locator("#input-audio1").inner_text().replace("\n", "")
    assert page.locator("#preset input").input_value() == "fast"


def test_browser_example_preset_runs(page, artifacts_dir: Path) -> None:
    page.locator("#example-single-image").click()
    page.wait_for_function("document.querySelector('#prompt textarea').value.includes('orange space suit')")
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('s of audio')", timeout=90_000)
    page.locator("#submit").click()
    seen = _watch_progress(page, "COMPLETED", timeout_s=300)
    assert seen[-1] == ("COMPLETED", 100.0), seen
    # The example asks for streaming: the whole 3.71 s of speech_person1.wav.
    assert _video_duration(page) == pytest.approx(3.71, abs=0.08)
    assert "seed 42" in page.locator("#result-link").inner_text()
    page.screenshot(path=str(artifacts_dir / "ui-example.png"), full_page=True)


def test_browser_box_drawn_by_two_clicks(page) -> None:
    _choose_setup(page, "Image · two speakers · audio files")
    page.locator("#input-image input[type=file]").set_input_files(str(MEDIA / "two_people.png"))
    img = page.locator("#box-canvas img")
    img.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#box-canvas img').naturalWidth > 0")
    # Where the picture itself lies inside the <img> box (object-fit contain/scale-down letterboxes it).
    r = page.evaluate("""(() => { const i = document.querySelector('#box-canvas img'); const b = i.getBoundingClientRect();
        let s = Math.min(b.width / i.naturalWidth, b.height / i.naturalHeight);
        if (getComputedStyle(i).objectFit === 'scale-down') s = Math.min(s, 1);
        return {x: b.x + (b.width - i.naturalWidth * s) / 2, y: b.y + (b.height - i.naturalHeight * s) / 2, s: s,
                w: i.naturalWidth, h: i.naturalHeight}; })()""")
    assert (r["w"], r["h"]) == (448, 280)

    def click(px: float, py: float) -> None:
        page.mouse.click(r["x"] + px * r["s"], r["y"] + py * r["s"])

    click(40, 30)
    page.wait_for_timeout(700)
    click(200, 250)
    page.wait_for_function("document.querySelector('#bbox1 input, #bbox1 textarea').value.split(' ').length == 4")
    x0, y0, x1, y1 = map(float, page.locator("#bbox1 input, #bbox1 textarea").first.input_value().split())
    tol = 2 / r["s"] + 1
    assert (x0, y0, x1, y1) == pytest.approx((40, 30, 200, 250), abs=tol)
    # Then person 2's box, the other way round (bottom-right corner first).
    page.locator("#box-target").get_by_label("person 2", exact=True).check()
    click(420, 260)
    page.wait_for_timeout(700)
    click(240, 10)
    page.wait_for_function("document.querySelector('#bbox2 input, #bbox2 textarea').value.split(' ').length == 4")
    b2 = tuple(map(float, page.locator("#bbox2 input, #bbox2 textarea").first.input_value().split()))
    assert b2 == pytest.approx((240, 10, 420, 260), abs=tol)


def test_browser_reattach_after_reload_and_cancel_shows_cancelled(page, artifacts_dir: Path) -> None:
    _upload_inputs(page)
    page.get_by_text("Overrides (empty").click()
    page.locator("#steps textarea, #steps input").first.fill("100")  # long enough to cancel while it runs
    page.locator("#submit").click()
    _watch_progress(page, "IN_PROGRESS")
    page.wait_for_function("document.querySelector('#job-id textarea, #job-id input').value.length > 0")
    job = page.locator("#job-id input, #job-id textarea").first.input_value()
    # A reload mid-job: the history still lists it; re-attaching by its id follows it again.
    page.wait_for_selector(f"#history tr[data-job='{job}'][data-status=IN_PROGRESS]")
    page.reload()
    page.wait_for_selector(f"#history tr[data-job='{job}']")
    assert not _visible(page, "cancel")
    page.locator("#history-pick input").fill(job)
    page.locator("#history-pick input").press("Enter")
    page.locator("#history-open").click()
    _watch_progress(page, "IN_PROGRESS")
    page.wait_for_selector("#cancel", state="visible")
    assert not page.locator("#submit").is_enabled()
    page.locator("#cancel").click()
    seen = _watch_progress(page, "CANCELLED", timeout_s=60)
    assert seen[-1][0] == "CANCELLED"
    page.wait_for_function("document.querySelector('#job-error').innerText.includes('Cancelled')")
    text = page.locator("#job-error").inner_text()
    assert "Error" not in text and "E_CANCELLED" not in text
    page.wait_for_function("document.querySelector('#submit') && !document.querySelector('#submit').disabled")
    assert not _visible(page, "cancel")
    page.wait_for_selector(f"#history tr[data-job='{job}'][data-status=CANCELLED]")
    page.screenshot(path=str(artifacts_dir / "ui-cancelled.png"), full_page=True)


def test_browser_worker_error_shows_code_and_hint(page, artifacts_dir: Path) -> None:
    # A voice this worker does not have: the worker fails the job with a code and a hint listing its voices.
    page.locator("#input-image input[type=file]").set_input_files(str(MEDIA / "portrait.png"))
    _choose_setup(page, "Image · one speaker · text to speech")
    page.wait_for_selector("#input-audio1", state="hidden")
    page.locator("#tts-text textarea").fill("Hello there.")
    page.locator("#voice1 input").fill("xx_nobody")
    page.locator("#voice1 input").press("Enter")
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('s of audio')", timeout=90_000)
    page.locator("#submit").click()
    seen = _watch_progress(page, "FAILED", timeout_s=120)
    assert seen[-1][0] == "FAILED"
    page.wait_for_function("document.querySelector('#job-error').innerText.includes('E_INPUT_VALIDATION')")
    text = page.locator("#job-error").inner_text()
    assert "xx_nobody" in text and "Hint:" in text and "af_heart" in text
    page.screenshot(path=str(artifacts_dir / "ui-error.png"), full_page=True)


def test_browser_plays_the_preview_while_the_job_renders(page, tmp_path: Path, artifacts_dir: Path) -> None:
    """hls.js in the page plays the job's HLS preview (mirrored by the UI) before the job completes, then
    gives way to the final MP4."""
    page.locator("#input-image input[type=file]").set_input_files(str(MEDIA / "portrait.png"))
    page.locator("#input-audio1 input[type=file]").set_input_files(str(_ten_second_wav(tmp_path / "ten.wav")))
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('10.0 s of audio')")
    page.get_by_text("Overrides (empty").click()
    page.locator("#steps textarea, #steps input").first.fill("12")  # slow enough to watch
    page.locator("#output-target input").fill("local")  # a preview needs storage (inline has none)
    page.locator("#output-target input").press("Enter")
    page.locator("#submit").click()
    page.wait_for_function("document.querySelector('#job-progress-box').dataset.preview", timeout=180_000)
    # frames of the preview on screen while /status still says IN_PROGRESS
    page.wait_for_function("""(() => { const v = document.getElementById('preview-video');
        return v && v.readyState >= 2 && v.currentTime > 0.2; })()""", timeout=60_000)
    shot = page.evaluate("""(() => { const v = document.getElementById('preview-video');
        const c = document.createElement('canvas'); c.width = v.videoWidth; c.height = v.videoHeight;
        const g = c.getContext('2d'); g.drawImage(v, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
        let sum = 0, sq = 0, n = 0; for (let i = 0; i < d.length; i += 4) { const y = (d[i] + d[i+1] + d[i+2]) / 3; sum += y; sq += y * y; n++; }
        const m = sum / n; return {w: c.width, h: c.height, mean: m, var: sq / n - m * m,
          status: document.getElementById('job-progress-box').dataset.status, t: v.currentTime}; })()""")
    page.screenshot(path=str(artifacts_dir / "ui-preview-playing.png"), full_page=True)
    assert shot["status"] == "IN_PROGRESS", shot
    assert (shot["w"], shot["h"]) == (32, 48) and shot["var"] > 20 and 5 < shot["mean"] < 250, shot
    assert page.evaluate("window.__previewHls && window.__previewHls.media === document.getElementById('preview-video')")
    _watch_progress(page, "COMPLETED", timeout_s=600)
    assert _video_duration(page) == pytest.approx(10.0, abs=0.08)
    page.wait_for_function("document.getElementById('preview-wrap').style.display === 'none'")  # the MP4 took over


def test_browser_issue_19_controls_reach_the_job(page, tmp_path: Path, artifacts_dir: Path) -> None:
    """Framing 1:1 and the trailing-silence trim, set in the page: the worker renders a square video that ends
    0.2 s after a 1 s tone followed by 2 s of silence (it would last 3 s without the trim)."""
    import numpy as np

    wav = tmp_path / "tone_then_silence.wav"
    t = np.arange(16000) / 16000
    pcm = np.concatenate([0.3 * np.sin(2 * np.pi * 220 * t), np.zeros(32000)])
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((pcm * 32767).astype("<i2").tobytes())
    page.locator("#input-image input[type=file]").set_input_files(str(MEDIA / "portrait.png"))
    page.locator("#input-audio1 input[type=file]").set_input_files(str(wav))
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('3.0 s of audio')",
                           timeout=90_000)
    page.locator("#aspect input").fill("1:1")
    page.locator("#aspect input").press("Enter")
    page.locator("#audio-options").get_by_text("Audio: pauses").click()  # open the accordion
    page.locator("#trim-silence input").check()
    page.locator("#submit").click()
    seen = _watch_progress(page, "COMPLETED", timeout_s=300)
    assert seen[-1] == ("COMPLETED", 100.0), seen
    assert _video_duration(page) == pytest.approx(1.2, abs=0.08)
    page.wait_for_function("document.querySelector('#result-link').innerText.includes('Trimmed')")
    facts = page.locator("#result-link").inner_text()
    width, height = (int(n) for n in facts.split(" · ")[1].split("x"))
    assert width == height, facts  # the 1:1 framing
    page.screenshot(path=str(artifacts_dir / "ui-issue19.png"), full_page=True)
