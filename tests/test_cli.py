"""The `leanvision` command line and the FLOPs table."""

import subprocess
import sys

import pytest

from leanvision.cli import build_parser, main
from leanvision.training.tools.flops import even_boundaries, flops_table


def test_help_explains_each_subcommand():
    result = subprocess.run([sys.executable, "-m", "leanvision.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("export", "flops", "train", "visualize-boundaries"):
        assert command in result.stdout
    for command in ("export", "flops", "visualize-boundaries"):
        sub = subprocess.run([sys.executable, "-m", "leanvision.cli", command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: leanvision" in sub.stdout


def test_cli_reports_bad_model_folder_clearly(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_even_boundaries_have_the_target_count():
    for rate, count in ((0.5, 24), (0.25, 12), (0.1, 4), (1.0, 49)):
        assert int(even_boundaries(49, rate).sum()) == count


@pytest.mark.slow
def test_flops_table_matches_published_figures_within_5_percent():
    rows = flops_table()
    assert len(rows) == 5
    for row in rows:
        assert abs(row["gmacs"] / row["published"] - 1) <= 0.05, row


def test_parser_builds():
    assert build_parser().parse_args(["flops", "--rates", "0.5"]).rates == [0.5]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "leanvision.cli", *args], capture_output=True, text=True)


def test_train_without_recipe_prints_usage_and_exits_2():
    result = cli("train")
    assert result.returncode == 2
    assert "usage: leanvision train RECIPE.yaml" in result.stderr and "a recipe is required" in result.stderr


def test_train_help_shows_examples_and_points_to_every_flag():
    result = cli("train", "--help")
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout and "leanvision train training/recipes/" in result.stdout
    assert "python training/train.py --help" in result.stdout
    assert len(result.stdout.splitlines()) < 40


def test_every_verb_help_has_an_example():
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert len(verbs) >= 13
    for verb, sub in verbs.items():
        if verb == "train":
            continue  # answered by TRAIN_USAGE, tested above
        text = sub.format_help()
        assert "examples:\n  leanvision " + verb in text, verb


def test_version():
    from leanvision import __version__

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"leanvision {__version__}"


def test_hub_and_network_failures_are_one_line_with_exit_2(monkeypatch, capsys):
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    import leanvision.cli as cli_module

    for err, advice in (
        (OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled."), "HF_HUB_OFFLINE"),
        (LocalEntryNotFoundError("not cached"), "check your connection"),
        (ConnectionError("Couldn't reach 'x/y' on the Hub"), "HF_HUB_OFFLINE"),
    ):
        def boom(args, err=err):
            raise err

        monkeypatch.setattr(cli_module, "_cmd_flops", boom)
        assert main(["flops"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("leanvision flops: error: ") and advice in lines[0], lines


def test_train_offline_hub_dataset_is_one_line_with_exit_2(tmp_path):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes",
                          "gated_sparse_blip_coco30k.yaml")
    result = subprocess.run([sys.executable, "-m", "leanvision.cli", "train", recipe, "--output_dir",
                             str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "offline mode is on" in lines[0], lines[-5:]
    assert not (tmp_path / "run").exists()
