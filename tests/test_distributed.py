"""Two ranks train on disjoint halves of the data, for every family: a 2-process CPU launch records a fingerprint
of every training example each rank feeds the model (the image or latent tensor) and the halves must not overlap."""

import json
import os

import pytest

from helpers import launch_two_ranks

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes")
TINY_RUN = ["--max_train_samples", "16", "--max_eval_samples", "2", "--per_device_train_batch_size", "4",
            "--max_steps", "2", "--disable_tqdm", "true", "--report_to", "none"]
RECIPE_OF = {
    "dtp_vit": "dtp_vit_digits.yaml",
    "dtp_clip": "dtp_clip_shapes.yaml",
    "gated_sparse_blip": "gated_sparse_blip_shapes.yaml",
    "qvision_multimodel": "qvision_shapes.yaml",
}
CAPTIONING = ["--generation_max_new_tokens", "2"]

# Records, per rank, a digest of each training example's vision tensor as the Trainer receives it.
RECORD = """
import hashlib, json, os, sys
from transformers import Trainer
step = Trainer.training_step
def recording_step(self, model, inputs, *args, **kwargs):
    vision = inputs["pixel_values"] if "pixel_values" in inputs else inputs["latents"]
    digests = [hashlib.sha1(row.detach().cpu().numpy().tobytes()).hexdigest() for row in vision]
    with open(os.path.join(os.environ["DIGESTS"], f"rank{self.args.process_index}.jsonl"), "a") as f:
        f.write(json.dumps({"step": self.state.global_step, "digests": digests}) + "\\n")
    return step(self, model, inputs, *args, **kwargs)
Trainer.training_step = recording_step
from leanvision.training.train import main
main(sys.argv[1:])
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(RECIPE_OF))
def test_two_ranks_train_on_disjoint_halves_of_the_data(family, tmp_path):
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    digests = tmp_path / "digests"
    digests.mkdir()
    argv = [os.path.join(RECIPES, RECIPE_OF[family]), "--output_dir", str(tmp_path / "run"), *TINY_RUN]
    if family in ("gated_sparse_blip", "qvision_multimodel"):
        argv += CAPTIONING
    launch_two_ranks(argv, tmp_path, script=str(script), DIGESTS=str(digests))
    seen = {}
    for rank in (0, 1):
        lines = [json.loads(line) for line in (digests / f"rank{rank}.jsonl").read_text().splitlines()]
        by_step = {line["step"]: line["digests"] for line in lines}  # a rerun of the launch repeats its steps
        seen[rank] = [digest for step in sorted(by_step) for digest in by_step[step]]
    # 16 examples, 2 ranks x batch 4 x 2 steps: one epoch, 8 distinct examples per rank, none shared.
    assert len(seen[0]) == len(seen[1]) == 8
    assert len(set(seen[0]) | set(seen[1])) == 16, seen
