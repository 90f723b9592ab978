"""`infinitetalk run` as a user runs it: a payload file with relative paths and Hydra overrides."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from worker.media.mux import probe_mp4

REPO = Path(__file__).resolve().parents[2]


def run_cli(tmp_path, *args, quiet=True):
    overrides = [f"server.cache_dir={tmp_path / 'cache'}", f"server.work_dir={tmp_path / 'w'}", f"storage.local.root={tmp_path / 'out'}"]
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "run", *args, *overrides, *(["--quiet"] if quiet else [])],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_run_example_with_overrides_writes_mp4(tmp_path):
    res = run_cli(tmp_path, "examples/single_image.json", "sampler=turbo", "gpu=cpu", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["config"]["sampler"] == "turbo" and out["config"]["sample_steps"] == 4
    assert probe_mp4(out["video_path"]).audio_codec == "aac"
    assert Path(out["video_path"]).is_relative_to(tmp_path / "out")


def test_run_prints_the_video_path_and_a_progress_line_with_eta(tmp_path):
    res = run_cli(tmp_path, "examples/single_image.json", "sampler=turbo", quiet=False)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(".mp4")  # only the path on stdout
    assert probe_mp4(lines[0]).num_frames > 0
    bars = [ln for ln in res.stderr.splitlines() if ln.startswith("[")]
    assert any(re.search(r"\] +\d+\.\d% sampling chunk \d+/\d+ step \d+/\d+ · \d+ s · eta \d+ s$", b) for b in bars), bars
    assert bars[-1].split("]")[1].strip().startswith("100.0% done")
    assert len(bars) < 40  # a trail of stage changes, not one line per step
    # the "job accepted" log line no longer dumps the whole resolved config
    assert max(len(ln) for ln in res.stderr.splitlines()) < 700, max(res.stderr.splitlines(), key=len)


def test_run_reports_a_coded_error_and_exit_status(tmp_path):
    payload = tmp_path / "bad.json"
    payload.write_text(json.dumps({"input": {"image": "media/none.png", "audio": "a.wav", "sampler": "nope"}}))
    res = run_cli(tmp_path, str(payload), "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout)["error"]["code"] == "E_INPUT_VALIDATION"
    assert "Traceback" not in res.stderr
    plain = run_cli(tmp_path, str(payload))
    assert plain.returncode == 1 and plain.stdout == ""
    assert "error E_INPUT_VALIDATION: sampler: must be one of" in plain.stderr and "\nhint: Change sampler" in plain.stderr


def test_a_mistyped_override_is_one_line_naming_the_choices(tmp_path):
    for override, expected in (
        ("sampler=qualty", "unknown sampler 'qualty' in 'sampler=qualty'; choose one of: fast, "),
        ("gpu=h100", "unknown gpu 'h100' in 'gpu=h100'; choose one of: a100_80, cpu, h100_80, h100_80x8, h200_141"),
        ("samplr=fast", "samplr is not a setting of the configuration; did you mean sampler?"),
        ("sampler", "override 'sampler' needs the form key=value"),
    ):
        res = run_cli(tmp_path, "examples/single_image.json", override)
        assert res.returncode == 2, res.stderr[-2000:]
        assert res.stderr.count("\n") == 1 and expected in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_serve_help_has_its_real_name_and_defaults():
    import os

    env = {**os.environ, "LOCAL_ENDPOINT_API_KEY": "sekrit-key-123"}
    res = subprocess.run([sys.executable, "-m", "tools.cli", "serve", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0
    assert "sekrit-key-123" not in res.stdout  # a credential's default is never shown
    assert res.stdout.startswith("usage: infinitetalk serve") and "python -m tools.local_endpoint" not in res.stdout
    assert "(default: 8000)" in res.stdout and "(default: 127.0.0.1)" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "tools.cli", "serve", "--port", "x"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "infinitetalk serve: error" in bad.stderr


def test_schema_command_prints_json_schema():
    res = subprocess.run([sys.executable, "-m", "tools.cli", "schema"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert json.loads(res.stdout)["title"] == "InfiniteTalk job input"


def test_schema_describes_every_field_with_the_stock_workers_default():
    """Every property has a description; a shown default is what the stock worker (conf/config.yaml,
    env unset) really uses for a job that leaves the field out -- never null where a default exists."""
    from configuration import compose_config
    from worker.resolve import apply_job_overrides
    from worker.job import DEFAULT_NEGATIVE_PROMPT
    from worker.media.audio import DEFAULT_VOICES
    from contract.job import job_input_json_schema, parse_job_input

    schema = job_input_json_schema()
    defs = schema.get("$defs", {})
    for props in [schema["properties"], *(d.get("properties", {}) for d in defs.values())]:
        for name, prop in props.items():
            assert prop.get("description"), name
            assert prop.get("default", "absent") is not None, (name, prop)
            assert "default" in prop or name in NO_DEFAULT, (name, prop)
    resolved = apply_job_overrides(compose_config(env={}), parse_job_input({"image": "https://e.com/a.png",
                                                                            "audio": "https://e.com/a.wav"})).to_dict()
    props = schema["properties"]
    for name, prop in props.items():
        if name in resolved and "default" in prop:
            assert prop["default"] == resolved[name], (name, prop["default"], resolved[name])
    assert props["mode"]["default"] == "streaming" and props["sampler"]["default"] == "fast"
    assert props["sample_steps"]["default"] == 8 and props["negative_prompt"]["default"] == DEFAULT_NEGATIVE_PROMPT
    cfg = compose_config(env={})
    out = defs["OutputSpec"]["properties"]
    assert out["target"]["default"] == cfg.storage.target and out["key_prefix"]["default"] == cfg.storage.key_prefix
    assert out["presign_expiry_s"]["default"] == cfg.storage.s3.presign_expiry_s
    tts = defs["TtsSpec"]["properties"]
    assert (tts["voice"]["default"], tts["voice2"]["default"]) == DEFAULT_VOICES


# Fields that have no default value: the media, what only two speakers need, the per-job seed, the tts text,
# the webhook address.
NO_DEFAULT = {"image", "video", "audio", "audio_type", "tts", "bbox", "seed", "output", "person1", "person2", "text",
              "webhook_url", "mask", "masks", "aspect", "width", "height", "prompts", "from_s", "ref"}


def test_run_takes_the_feature_flags_on_top_of_the_payload(tmp_path):
    """The same flags as `submit` (client/flags.py): a mask file from another folder is readable for this run,
    the framing and the trim reach the job."""
    import numpy as np
    import soundfile
    from PIL import Image

    (tmp_path / "job").mkdir()
    (tmp_path / "masks").mkdir()
    t = np.arange(16000) / 16000
    soundfile.write(tmp_path / "job" / "tone.wav", np.concatenate([0.3 * np.sin(2 * np.pi * 220 * t),
                                                                    np.zeros(32000)]).astype(np.float32), 16000)
    w, h = Image.open(REPO / "examples" / "media" / "portrait.png").size
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 2] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "left.png")
    payload = tmp_path / "job" / "p.json"
    (tmp_path / "job" / "portrait.png").write_bytes((REPO / "examples" / "media" / "portrait.png").read_bytes())
    payload.write_text(json.dumps({"input": {"image": "portrait.png", "audio": "tone.wav", "sampler": "turbo",
                                             "seed": 1}}))
    res = run_cli(tmp_path, str(payload), "--json", "--aspect", "1:1", "--trim-silence", "--prompt-at", "0.5=a beach",
                  "--mask", str(tmp_path / "masks" / "left.png"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["width"] == out["height"] and out["config"]["trim_trailing_silence"] is True
    assert out["trimmed_s"] > 1.5 and out["num_frames"] == 30  # 1 s of tone and the 0.2 s tail
    bad = run_cli(tmp_path, str(payload), "--prompt-at", "beach")
    assert bad.returncode == 2 and "expected SECONDS=TEXT" in bad.stderr
