"""Packaging: everything installs under `leanvision`, and a non-editable install imports on its own."""

import os
import subprocess
import sys
import zipfile


def test_wheel_holds_only_the_leanvision_namespace_and_installs_standalone(tmp_path, repo_root):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         repo_root],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / wheel) as zf:
        names = zf.namelist()
        top = {name.split("/")[0] for name in names}
        assert top == {"leanvision", "leanvision-0.1.0.dist-info"}, top
        for needed in ("leanvision/training/recipes/dtp_vit_digits.yaml",
                       "leanvision/training/metrics/caption_metrics/caption_metrics.py",
                       "leanvision/modeling/modeling_dtp_vit.py", "leanvision/cli.py"):
            assert needed in names, needed
        assert not any("/tests/" in n or n.startswith("tests/") for n in names)
        zf.extractall(tmp_path / "site")
    check = (
        "import leanvision, os, sys; from leanvision import DTPViTConfig, DTPViTModel, DTPViTForImageClassification; "
        "print(os.path.dirname(leanvision.__file__))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(tmp_path / "site" / "leanvision")
