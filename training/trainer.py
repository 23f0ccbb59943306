"""`LeanTrainer`: transformers' Trainer that also logs the model's auxiliary outputs (e.g. boundary ratio)."""

import torch
from transformers import Trainer


class LeanTrainer(Trainer):
    """Averages `aux_log_keys` of the model outputs over the steps between two logs and logs them beside the loss."""

    aux_log_keys = ("boundary_loss", "boundary_ratio")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._aux_values: dict[str, list[torch.Tensor]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            for key in self.aux_log_keys:
                value = outputs.get(key) if isinstance(outputs, dict) else None
                if value is not None:
                    self._aux_values.setdefault(key, []).append(value.detach().float().mean())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._aux_values:
            for key, values in self._aux_values.items():
                mean = torch.stack(values).mean()
                logs[key] = round(float(self.accelerator.reduce(mean, reduction="mean")), 4)
            self._aux_values = {}
        super().log(logs, start_time)
