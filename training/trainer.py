"""The trainers of `train.py`: `LeanTrainer` (transformers' Trainer that also logs the model's auxiliary outputs, e.g.
the boundary ratio), `CaptionTrainer` (evaluation by generation) and `ContrastiveTrainer` (+ zero-shot accuracy), and
`TaskSetup`, what a task hands to them."""

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from transformers import Trainer

from .evaluation.captions import FAST_METRICS, flat_scores, parse_metric_names, score_captions
from .evaluation.zero_shot import zero_shot_accuracy
from .inference import decode_captions, generation_inputs

logger = logging.getLogger("leanvision.trainer")


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


class CaptionTrainer(LeanTrainer):
    """Evaluates by generation: each eval batch gives the teacher-forced loss and `generate()`d captions, which are
    gathered across ranks (`gather_for_metrics`, via the evaluation loop) with the batch's `example_id`s, decoded
    and scored against `references[example_id]` on the main process; the scores are broadcast to every rank and
    logged as `eval_<metric>`.

    Args:
        references: the reference captions of each eval example, indexed by `example_id`.
        generation_kwargs: passed to `generate()` (e.g. `max_new_tokens`, `num_beams`, `do_sample=False`).
        caption_metrics: metric names of the caption metric module to compute.

    After each evaluation, `last_predictions` holds the generated captions in eval-dataset order.
    """

    def __init__(self, *args, references, generation_kwargs=None, caption_metrics=FAST_METRICS, **kwargs):
        super().__init__(*args, **kwargs)
        self.references = references
        self.generation_kwargs = dict(generation_kwargs or {})
        self.caption_metrics = parse_metric_names(caption_metrics)
        self.compute_metrics = self._score_generated
        self.last_predictions: list[str] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {key: value for key, value in inputs.items() if key != "example_id"}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs).detach().mean()
            if prediction_loss_only:
                return loss, None, None
            generator = self.accelerator.unwrap_model(model)
            generated = generator.generate(**generation_inputs(inputs), **self.generation_kwargs)
        return loss, generated, inputs["example_id"]

    def _score_generated(self, prediction) -> dict[str, float]:
        example_ids = np.asarray(prediction.label_ids).reshape(-1)
        captions = decode_captions(self.processing_class, prediction.predictions)
        scores = [None]
        if self.accelerator.is_main_process:
            result = score_captions(captions, [self.references[i] for i in example_ids], self.caption_metrics)
            scores = [flat_scores(result)]
            for example_id, caption in list(zip(example_ids, captions))[:3]:
                logger.info("caption %d: %r (reference %r)", example_id, caption, self.references[example_id][0])
        if self.accelerator.num_processes > 1:
            broadcast_object_list(scores)
        self.last_predictions = [caption for _, caption in sorted(zip(example_ids.tolist(), captions))]
        return scores[0]


class ContrastiveTrainer(LeanTrainer):
    """Evaluation = the contrastive loss on the eval pairs plus, when the eval split has class labels, zero-shot
    top-1 / top-5 accuracy of the prompts (gathered across ranks), logged as `eval_zero_shot_top1` / `_top5`."""

    def __init__(self, *args, zero_shot=None, image_column: str = "image", **kwargs):
        super().__init__(*args, **kwargs)
        self.zero_shot = zero_shot
        self.image_column = image_column

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.zero_shot is not None:
            label_column, prompts = self.zero_shot
            scores = zero_shot_accuracy(
                self.model, self.processing_class, eval_dataset or self.eval_dataset, prompts,
                image_column=self.image_column, label_column=label_column,
                batch_size=self.args.per_device_eval_batch_size, accelerator=self.accelerator,
            )
            scores = {f"{metric_key_prefix}_{key}": value for key, value in scores.items()}
            self.log(scores)
            metrics.update(scores)
        return metrics


@dataclass
class TaskSetup:
    """What `train.py` hands to the Trainer: `trainer_class(model=..., **trainer_kwargs, ...)`."""

    model: torch.nn.Module
    processor: object
    train_dataset: object
    eval_dataset: object
    data_collator: Callable
    compute_metrics: Callable | None = None
    preprocess_logits_for_metrics: Callable | None = None
    trainer_class: type = LeanTrainer
    trainer_kwargs: dict = field(default_factory=dict)
    callbacks: list = field(default_factory=list)
