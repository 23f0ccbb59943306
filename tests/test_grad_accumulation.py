"""Gradient accumulation weighs every caption token equally: one optimizer step over 8 captions of unequal length
gives the same gradients as batch 8 or as 4 x 2 accumulated micro-batches (the captioners normalise the summed loss
by Trainer's `num_items_in_batch`; a per-micro-batch mean would weigh the shorter micro-batch's tokens more)."""

import json
import os

import pytest
import torch
import yaml
from transformers import TrainerCallback, set_seed

from leanvision.training.families import get_family
from leanvision.training.tasks import TASKS
from leanvision.training.train import parse_args

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes")
NO_DROPOUT = {"gated_sparse_blip_shapes.yaml": {"token_gate_dropout": 0.0}, "qvision_shapes.yaml": {"qformer_dropout": 0.0}}


class GradientGrab(TrainerCallback):
    """Copies every gradient just before the first optimizer step."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def first_step_gradients(recipe: str, tmp_path, batch: int, accumulation: int) -> dict:
    with open(os.path.join(RECIPES, recipe)) as f:
        overrides = yaml.safe_load(f)["config_overrides"]
    overrides.update(NO_DROPOUT[recipe])
    model_args, data_args, training_args = parse_args([
        os.path.join(RECIPES, recipe), "--output_dir", str(tmp_path), "--max_train_samples", "16",
        "--max_eval_samples", "4", "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps",
        str(accumulation), "--max_steps", "1", "--max_grad_norm", "0", "--config_overrides", json.dumps(overrides),
        "--disable_tqdm", "true", "--report_to", "none", "--seed", "5",
    ])
    training_args.remove_unused_columns = False
    set_seed(training_args.seed)
    family = get_family(model_args.family)
    setup = TASKS[family.task](family, model_args, data_args, training_args)
    grab = GradientGrab()
    trainer = setup.trainer_class(
        model=setup.model, args=training_args, train_dataset=setup.train_dataset, data_collator=setup.data_collator,
        processing_class=setup.processor, callbacks=[grab], **setup.trainer_kwargs,
    )
    trainer.train()
    return grab.grads


@pytest.mark.parametrize("recipe", sorted(NO_DROPOUT))
def test_accumulated_micro_batches_give_the_full_batch_gradient(recipe, tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        full = first_step_gradients(recipe, tmp_path / "full", batch=8, accumulation=1)
        accumulated = first_step_gradients(recipe, tmp_path / "accumulated", batch=4, accumulation=2)
    finally:
        torch.use_deterministic_algorithms(False)
    assert full.keys() == accumulated.keys() and len(full) > 10
    for name, grad in full.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-6)
