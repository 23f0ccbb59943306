"""Per-task training set-up: model, processor, datasets, collator and metrics for `train.py`."""

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..processing.processing_dtp_vit import build_image_processor
from .data.digits import digits_dataset
from .data.loading import label_names, load_any_dataset, training_splits
from .task_captioning import setup_captioning as prepare_captioning
from .task_contrastive import setup_contrastive as prepare_contrastive
from .trainer import LeanTrainer


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


def parse_config_overrides(overrides) -> dict:
    """`config_overrides` from a recipe (a dict) or the command line (a JSON object string)."""
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    try:
        value = json.loads(overrides)
    except json.JSONDecodeError as err:
        raise ValueError(f"config_overrides must be a JSON object, got {overrides!r}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"config_overrides must be a JSON object, got {overrides!r}")
    return value


def build_model(family, model_args, **config_kwargs):
    """A fresh model from the family's config (+ overrides), or one loaded from `model_name_or_path`."""
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.model_name_or_path:
        return family.model_class.from_pretrained(model_args.model_name_or_path, **overrides, **config_kwargs)
    return family.model_class(family.config_class(**overrides, **config_kwargs))


def setup_image_classification(family, model_args, data_args, training_args) -> TaskSetup:
    if data_args.dataset_name:
        data = load_any_dataset(data_args.dataset_name, data_args.dataset_config_name)
    else:
        data = digits_dataset(seed=training_args.seed)
    train, evaluation = training_splits(data, data_args, training_args.seed)
    image_col, label_col = data_args.image_column, data_args.label_column
    for split in (train, evaluation):
        for column in (image_col, label_col):
            if column not in split.column_names:
                raise ValueError(f"dataset has no column {column!r}; columns: {split.column_names}")

    names = label_names(train, label_col)
    id2label = dict(enumerate(names))
    label2id = {name: i for i, name in id2label.items()}
    model = build_model(family, model_args, id2label=id2label, label2id=label2id)
    if model.config.num_labels != len(names):
        raise ValueError(f"the model has {model.config.num_labels} labels but the dataset has {len(names)}")
    processor = build_image_processor(model.config.image_size)
    is_class_label = hasattr(train.features[label_col], "names")

    def transform(batch):
        images = [image.convert("RGB") for image in batch[image_col]]
        labels = batch[label_col] if is_class_label else [label2id[str(v)] for v in batch[label_col]]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.tensor(labels, dtype=torch.long)}

    def collate(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.stack([e["labels"] for e in examples]),
        }

    def preprocess_logits(outputs, labels):
        logits, boundary_ratio = outputs[0], outputs[1]
        return torch.cat([logits, boundary_ratio[:, None].to(logits.dtype)], dim=1)

    def compute_metrics(prediction):
        scores = prediction.predictions
        logits, ratio = scores[:, :-1], scores[:, -1]
        accuracy = float((logits.argmax(-1) == prediction.label_ids).mean())
        return {"accuracy": accuracy, "boundary_ratio": float(np.mean(ratio))}

    return TaskSetup(
        model=model,
        processor=processor,
        train_dataset=train.with_transform(transform),
        eval_dataset=evaluation.with_transform(transform),
        data_collator=collate,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits,
    )


def setup_captioning(family, model_args, data_args, training_args) -> TaskSetup:
    """Image captioning for any family with a `build_captioner` (see `task_captioning.py`)."""
    overrides = parse_config_overrides(model_args.config_overrides)
    return TaskSetup(**prepare_captioning(family, model_args, data_args, training_args, overrides))


def setup_contrastive(family, model_args, data_args, training_args) -> TaskSetup:
    """CLIP-style image-text training with zero-shot evaluation (see `task_contrastive.py`)."""
    overrides = parse_config_overrides(model_args.config_overrides)
    return TaskSetup(**prepare_contrastive(family, model_args, data_args, training_args, overrides))


TASKS = {
    "image_classification": setup_image_classification,
    "captioning": setup_captioning,
    "contrastive": setup_contrastive,
}
