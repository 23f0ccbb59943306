"""`leanvision visualize-boundaries`: figures a person reads at a glance (grey digits in grayscale, segment borders as
lines, titles with the file name and the prediction, out-dir beside the model), checked on the figure objects."""

import os

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from leanvision.cli import main as cli_main
from leanvision.training.data.digits import digits_dataset
from leanvision.training.tools import visualize
from leanvision.training.tools.visualize import draw_boundaries, segment_edges, segment_ids
from test_classify import DIGITS, vit_dir, vit_probabilities  # noqa: F401 (vit_dir is a fixture)

BORDER = to_rgba("tab:orange")


@pytest.fixture
def figures(monkeypatch):
    """Every figure visualize saves, as (path, figure) before it is closed."""
    saved = []
    original = visualize.save_figure_atomically

    def record(fig, path):
        saved.append((path, fig))
        return original(fig, path)

    monkeypatch.setattr(visualize, "save_figure_atomically", record)
    return saved


def _border_lines(ax):
    return [line for line in ax.lines if to_rgba(line.get_color()) == BORDER]


def test_segment_edges_follow_the_segment_ids():
    # seg = cumsum(b) - b = [[0, 1], [1, 1]]: patch (0, 0) alone, bordered on its right and below.
    assert segment_ids([1, 0, 0, 0]).tolist() == [0, 1, 1, 1]
    assert segment_edges(segment_ids([1, 0, 0, 0]).reshape(2, 2)) == ([(0, 0)], [(0, 0)])
    assert segment_edges(np.zeros((3, 3), dtype=int)) == ([], [])


def test_grey_digit_is_drawn_in_grayscale_with_borders_as_lines(tmp_path, figures):
    digit = digits_dataset()["test"][0]["image"].convert("RGB")
    boundaries = np.zeros(64, dtype=int)
    boundaries[[5, 20, 41]] = 1
    draw_boundaries(digit, boundaries, str(tmp_path / "d.png"), title="digit.png: predicted '3' (0.91)")
    (path, fig), = figures
    ax = fig.axes[0]
    assert len(ax.images) == 1  # the picture only: no tint layer over it
    shown = ax.images[0]
    assert shown.get_array().ndim == 2 and shown.get_cmap().name == "gray"
    assert np.array_equal(np.asarray(shown.get_array()), np.asarray(digit.convert("L")))
    right, below = segment_edges(segment_ids(boundaries).reshape(8, 8))
    assert len(_border_lines(ax)) == len(right) + len(below) > 0
    assert ax.get_title().startswith("digit.png: predicted '3' (0.91)\n4 segments / 64 patches")
    with Image.open(path) as png:
        assert png.format == "PNG"

    colour = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    draw_boundaries(colour, boundaries, str(tmp_path / "c.png"))
    assert figures[-1][1].axes[0].images[0].get_array().ndim == 3  # colour pictures stay in colour


def test_cli_draws_a_folder_beside_the_model_titled_with_file_and_prediction(vit_dir, tmp_path, figures, capsys):
    folder = tmp_path / "digits"
    folder.mkdir()
    images = [digits_dataset()["test"][i]["image"] for i in range(3)]
    for i, image in enumerate(images):
        image.save(folder / f"{i}.png")

    assert cli_main(["visualize-boundaries", str(folder), "--model", str(vit_dir)]) == 0
    out_dir = f"{os.path.normpath(vit_dir)}-boundaries"
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{folder / f'{i}.png'} -> {os.path.join(out_dir, f'boundaries_{i}.png')}" for i in range(3)]
    assert sorted(os.listdir(out_dir)) == [f"boundaries_{i}.png" for i in range(3)]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(os.path.join(out_dir, "boundaries_0.png")).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    probabilities = vit_probabilities(vit_dir, images)
    for i, (_, fig) in enumerate(figures):
        best = int(probabilities[i].argmax())
        title = fig.axes[0].get_title()
        assert title.startswith(f"{i}.png: predicted {DIGITS[best]!r} ({float(probabilities[i, best]):.2f})")
        assert fig.axes[0].images[0].get_cmap().name == "gray"


def test_cli_reports_a_bad_file_in_a_folder_and_exits_1(vit_dir, tmp_path, capsys):
    folder = tmp_path / "digits"
    folder.mkdir()
    digits_dataset()["test"][0]["image"].save(folder / "0.png")
    (folder / "broken.png").write_bytes(b"not a png")
    assert cli_main(["visualize-boundaries", str(folder), "--model", str(vit_dir), "--out-dir",
                     str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "1 of 2 images could not be read" in captured.err
    assert os.listdir(tmp_path / "out") == ["boundaries_0.png"]
