"""The worker's typed core must not pull in torch (or runpod) at import time."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_core_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import contract.errors, contract.job, configuration, worker.logging_setup, worker.progress\n"
        "configuration.compose_config(env={})\n"
        "bad = sorted(m for m in ('torch', 'runpod', 'numpy') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at module load: {out.stdout.strip()}"
