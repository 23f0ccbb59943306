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
