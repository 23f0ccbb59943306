"""`--report_to tensorboard` with the optional extra (`pip install leanvision[tensorboard]`): the run writes TensorBoard
event files whose scalars are the run's logged loss and boundary ratio."""

import glob
import json
import os

import pytest

from leanvision.training.train import main as train_main

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install leanvision[tensorboard]")

RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes",
                      "dtp_vit_digits.yaml")


def test_report_to_tensorboard_writes_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_main([RECIPE, "--output_dir", str(out), "--report_to", "tensorboard", "--max_steps", "3",
                "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--max_train_samples", "48",
                "--max_eval_samples", "16", "--per_device_train_batch_size", "16", "--disable_tqdm", "true"])
    (run,) = glob.glob(str(out / "runs" / "*"))
    events = EventAccumulator(run)
    events.Reload()
    logged = [entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([x["loss"] for x in logged], rel=1e-5)
    assert [e.value for e in events.Scalars("train/boundary_ratio")] == pytest.approx(
        [x["boundary_ratio"] for x in logged], rel=1e-5)
