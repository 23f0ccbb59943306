"""The image classification task of `train.py` (DTP-ViT): scikit-learn's digits by default, or any dataset with an
image and a label column; evaluation reports accuracy and the mean boundary ratio."""

import numpy as np
import torch

from ..data.digits import digits_dataset
from ..data.loading import label_names, load_any_dataset, training_splits
from ..trainer import TaskSetup


def setup_image_classification(family, model_args, data_args, training_args) -> TaskSetup:
    """Model, processor, datasets (transformed on the fly), collator and metrics for an image classifier."""
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
    model, processor = family.build(model_args, model_args.config_overrides, names)
    if model.config.num_labels != len(names):
        raise ValueError(f"the model has {model.config.num_labels} labels but the dataset has {len(names)}")
    label2id = model.config.label2id
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
