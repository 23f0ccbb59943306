"""Datasets for training and evaluation: the built-in defaults and Hub / local datasets of the same schema."""

import os

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image as ImageFeature, load_dataset, load_from_disk
from PIL import Image

DIGIT_UPSCALE = 4  # scikit-learn's digits are 8x8; stored as 32x32 images


def digits_dataset(test_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """scikit-learn's 1,797 handwritten digits as 32x32 grayscale images, split deterministically (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = [Image.fromarray(p).resize((8 * DIGIT_UPSCALE,) * 2, Image.BICUBIC) for p in pixels]
    indices = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        indices, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    names = [str(i) for i in range(10)]

    def subset(idx):
        data = {"image": [images[i] for i in idx], "label": [int(digits.target[i]) for i in idx]}
        return Dataset.from_dict(data).cast_column("image", ImageFeature()).cast_column(
            "label", ClassLabel(names=names)
        )

    return DatasetDict(train=subset(sorted(train_idx)), test=subset(sorted(test_idx)))


def load_any_dataset(name_or_path: str, config_name: str | None = None) -> DatasetDict:
    """A Hub dataset name, a folder written by `save_to_disk`, or a local folder/file `load_dataset` understands."""
    if os.path.isdir(name_or_path) and (
        os.path.exists(os.path.join(name_or_path, "dataset_dict.json"))
        or os.path.exists(os.path.join(name_or_path, "dataset_info.json"))
    ):
        data = load_from_disk(name_or_path)
    else:
        data = load_dataset(name_or_path, config_name)
    if isinstance(data, Dataset):
        data = DatasetDict(train=data)
    return data


def split_for_eval(data: DatasetDict, train_split: str, eval_split: str | None, eval_fraction: float, seed: int):
    """Returns (train, eval) datasets; carves a deterministic eval split out of train when none exists."""
    if train_split not in data:
        raise ValueError(f"dataset has no split {train_split!r}; splits: {sorted(data)}")
    if eval_split and eval_split in data:
        return data[train_split], data[eval_split]
    if eval_split and eval_split != "auto":
        raise ValueError(f"dataset has no split {eval_split!r}; splits: {sorted(data)} (use 'auto' to carve one)")
    parts = data[train_split].train_test_split(test_size=eval_fraction, seed=seed)
    return parts["train"], parts["test"]


def label_names(dataset: Dataset, label_column: str) -> list[str]:
    """Class names from a ClassLabel column, else the sorted distinct values as strings."""
    feature = dataset.features.get(label_column)
    if feature is None:
        raise ValueError(f"dataset has no column {label_column!r}; columns: {dataset.column_names}")
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(v) for v in sorted(set(dataset[label_column]))]
