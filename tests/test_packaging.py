"""Packaging: everything installs under `leanvision`, and a non-editable install imports on its own."""

import ast
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
                       "leanvision/training/evaluation/caption_metrics/caption_metrics.py",
                       "leanvision/training/data/shapes.py", "leanvision/training/tools/flops.py",
                       "leanvision/hub_cards/adapter.jinja", "leanvision/hub_cards/space/app.py",
                       "leanvision/modeling/modeling_dtp_vit.py", "leanvision/cli.py", "leanvision/demo.py"):
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


# What training/ must never import: the Hub side and the entry points built on top of it.
FORBIDDEN_FROM_TRAINING = ("leanvision.hub_cards", "leanvision.demo", "leanvision.cli")


def imported_modules(path: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file at `path`, a module of `package` (dotted)."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            # `from . import x` may name a module: check the names too.
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def forbidden_imports(root: str, folder: str = "training") -> list[str]:
    problems = []
    for directory, _, files in os.walk(os.path.join(root, folder)):
        package = ".".join(["leanvision", *os.path.relpath(directory, root).split(os.sep)])
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(directory, name)
            for line, module in imported_modules(path, package):
                if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN_FROM_TRAINING):
                    problems.append(f"{os.path.relpath(path, root)}:{line} imports {module}")
    return problems


def test_import_scanner_catches_relative_and_absolute_imports_of_the_hub_side(tmp_path):
    (tmp_path / "training" / "tasks").mkdir(parents=True)
    (tmp_path / "training" / "ok.py").write_text("from .families import get_family\nimport os\n")
    (tmp_path / "training" / "tasks" / "bad.py").write_text(
        "from ...hub_cards.cards import render_card\nfrom ... import cli\nimport leanvision.demo\n"
        "from leanvision.hub_cards import export\n"
    )
    assert forbidden_imports(str(tmp_path)) == [
        "training/tasks/bad.py:1 imports leanvision.hub_cards.cards",
        "training/tasks/bad.py:1 imports leanvision.hub_cards.cards.render_card",
        "training/tasks/bad.py:2 imports leanvision.cli",
        "training/tasks/bad.py:3 imports leanvision.demo",
        "training/tasks/bad.py:4 imports leanvision.hub_cards",
        "training/tasks/bad.py:4 imports leanvision.hub_cards.export",
    ]


def test_training_never_imports_the_hub_side_or_the_entry_points(repo_root):
    assert forbidden_imports(repo_root) == []
