"""Atomic writes: a failure injected in the middle of writing a JSON report or a figure leaves the previous file
intact and no temporary file behind (`leanvision evaluate --out`, `analyze`, `visualize-boundaries` write this way;
export, publish and the Space folder rename whole folders, tested with them)."""

import json
import os

import matplotlib.pyplot as plt
import pytest

from leanvision.training.files import write_json_atomically
from leanvision.training.tools.visualize import save_figure_atomically


def test_json_report_survives_a_failure_mid_write(tmp_path):
    path = tmp_path / "scores.json"
    write_json_atomically(str(path), {"cider": 1.5})
    with pytest.raises(TypeError):
        write_json_atomically(str(path), {"cider": 2.0, "broken": object()})  # json.dump fails half-way
    assert json.loads(path.read_text()) == {"cider": 1.5}
    assert os.listdir(tmp_path) == ["scores.json"]
    write_json_atomically(str(path), {"cider": 2.0})
    assert json.loads(path.read_text()) == {"cider": 2.0}


def test_figure_survives_a_failure_mid_write(tmp_path):
    path = tmp_path / "boundaries_0.png"
    fig = plt.figure()
    save_figure_atomically(fig, str(path))
    previous = path.read_bytes()

    fig = plt.figure()

    def half_written(target, **kwargs):
        with open(target, "wb") as f:
            f.write(previous[:100])
        raise OSError("disk full (injected)")

    fig.savefig = half_written
    with pytest.raises(OSError, match="injected"):
        save_figure_atomically(fig, str(path))
    assert path.read_bytes() == previous
    assert os.listdir(tmp_path) == ["boundaries_0.png"]
