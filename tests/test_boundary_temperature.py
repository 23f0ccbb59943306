"""Gumbel temperature annealing of DTP's boundary predictor: the schedule's equations, the config checks, and the
temperature a real Trainer run trains each step with."""

import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import Trainer, TrainingArguments

from leanvision import DTPViTConfig
from leanvision.modeling.modeling_dtp_vit import DTPViTForImageClassification, annealed_temperature
from leanvision.training.callbacks import BoundaryTemperatureCallback, build_temperature_callback


def test_schedules_follow_their_equations():
    assert [annealed_temperature(1.0, 0.2, s) for s in (0.0, 0.25, 1.0)] == pytest.approx([1.0, 0.8, 0.2])
    cosine = [annealed_temperature(1.0, 0.2, s, "cosine") for s in (0.0, 0.25, 0.5, 1.0)]
    assert cosine == pytest.approx([1.0, 0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2, 0.6, 0.2])
    assert annealed_temperature(1.0, 0.2, 1.5) == pytest.approx(0.2)  # progress is clamped to [0, 1]


@pytest.mark.parametrize("overrides, message", [
    ({"boundary_temperature_final": 0.0}, "boundary_temperature_final must be > 0"),
    ({"boundary_temperature_schedule": "step"}, "boundary_temperature_schedule must be 'linear' or 'cosine'"),
])
def test_bad_anneal_settings_are_refused(overrides, message):
    with pytest.raises(StrictDataclassError, match=message):
        DTPViTConfig(**overrides)


def tiny_classifier(**overrides) -> DTPViTForImageClassification:
    torch.manual_seed(0)
    config = DTPViTConfig(image_size=16, patch_size=4, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                          num_pre_layers=1, num_shortened_layers=1, compression_rate=0.25, num_labels=3,
                          boundary_predictor_hidden_size=16, **overrides)
    return DTPViTForImageClassification(config)


def test_a_trainer_run_trains_each_step_at_the_scheduled_temperature(tmp_path):
    model = tiny_classifier(boundary_temperature=1.0, boundary_temperature_final=0.1,
                            boundary_temperature_schedule="cosine")
    callback = build_temperature_callback(model)
    assert isinstance(callback, BoundaryTemperatureCallback)
    seen = []
    predictor = model.dtp_vit.boundary_predictor
    predictor.register_forward_pre_hook(
        lambda module, args: seen.append(module.temperature) if module.training else None
    )
    generator = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 16, 16, generator=generator), "labels": i % 3} for i in range(20)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=5, logging_steps=1,
                             save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()

    expected = [annealed_temperature(1.0, 0.1, step / 4, "cosine") for step in range(5)]
    assert seen == pytest.approx(expected) and seen[0] == 1.0 and seen[-1] == pytest.approx(0.1)
    logged = {entry["step"]: entry["boundary_temperature"] for entry in trainer.state.log_history
              if "boundary_temperature" in entry}
    assert logged == pytest.approx({step + 1: tau for step, tau in enumerate(expected)})


def test_no_callback_without_an_anneal():
    assert build_temperature_callback(tiny_classifier()) is None
