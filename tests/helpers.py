"""Shared test helpers: run code in a fresh interpreter in which `import leanvision` fails."""

import json
import os
import subprocess
import sys

BLOCK_LEANVISION = 'import sys\nsys.modules["leanvision"] = None\n'


def run_fresh(script: str, tmp_path, *args: str) -> dict:
    """Runs `script` (prefixed with the leanvision block) in a new interpreter; returns the JSON of its last line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_LEANVISION + script, *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
