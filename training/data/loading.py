"""Hub / local datasets and their splits: the one place that decides which split trains and which evaluates."""

import os

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

# Split names that hold evaluation data, in order of preference.
EVAL_SPLITS = ("test", "validation")


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


def first_rows(dataset: Dataset, count: int | None) -> Dataset:
    """The first `count` rows of `dataset` (all of them when `count` is None or 0)."""
    return dataset.select(range(min(count, len(dataset)))) if count else dataset


def split_for_eval(data: DatasetDict, train_split: str, eval_split: str | None, eval_fraction: float,
                   seed: int) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets of a training run. `eval_split` "auto" (or None) takes "test", else "validation", else
    carves a deterministic `eval_fraction` out of train; any other name must be a split of `data`."""
    if train_split not in data:
        raise ValueError(f"dataset has no split {train_split!r}; splits: {sorted(data)}")
    if eval_split in (None, "auto"):
        eval_split = next((name for name in EVAL_SPLITS if name in data), None)
    elif eval_split not in data:
        raise ValueError(f"dataset has no split {eval_split!r}; splits: {sorted(data)} (use 'auto' to carve one)")
    if eval_split:
        return data[train_split], data[eval_split]
    parts = data[train_split].train_test_split(test_size=eval_fraction, seed=seed)
    return parts["train"], parts["test"]


def training_splits(data: DatasetDict, data_args, seed: int) -> tuple[Dataset, Dataset]:
    """(train, eval) of `data` for a training run (`split_for_eval` with the `DataArguments`), truncated to
    `max_train_samples` / `max_eval_samples`."""
    train, evaluation = split_for_eval(data, data_args.train_split, data_args.eval_split, data_args.eval_fraction, seed)
    return first_rows(train, data_args.max_train_samples), first_rows(evaluation, data_args.max_eval_samples)


def evaluation_split(data: DatasetDict, split: str | None, dataset_name: str) -> tuple[Dataset, str]:
    """(dataset, split name) to evaluate a saved model on: `split`, by default "test", else "validation", else
    "train"."""
    if split is None:
        split = next((name for name in (*EVAL_SPLITS, "train") if name in data), None)
    if split not in data:
        raise ValueError(f"dataset {dataset_name!r} has no split {split!r}; splits: {sorted(data)}")
    return data[split], split


def label_names(dataset: Dataset, label_column: str) -> list[str]:
    """Class names from a ClassLabel column, else the sorted distinct values as strings."""
    feature = dataset.features.get(label_column)
    if feature is None:
        raise ValueError(f"dataset has no column {label_column!r}; columns: {dataset.column_names}")
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(v) for v in sorted(set(dataset[label_column]))]
