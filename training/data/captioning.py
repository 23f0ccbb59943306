"""Captioning data for every captioning family: sources, caption columns and latent caching.

Three sources give a (train, eval) pair of `datasets.Dataset`s:

- the built-in shapes set (`shapes.py`: image, canonical `caption`, five reference `captions`);
- a Hub or local dataset with an image column and a caption column (one string, or a list of strings per image);
- a dataset of VAE latents in the coco30k schema: `vae_latent` (flattened float32), `vae_latent_shape`
  (e.g. `[4, 26, 38]`) and `caption`.

Families that read latents (GatedSparseBlip) turn image data into the latent schema once, with their frozen VAE and
`datasets.map`, so training never runs the VAE. Every eval example carries an `example_id`, the index of its
references, so generated captions can be matched to them after a cross-rank gather.
"""

import hashlib

import torch
from datasets import Dataset

from .loading import evaluation_split, first_rows, load_any_dataset, training_splits
from .shapes import shapes_splits

LATENT_COLUMNS = ("vae_latent", "vae_latent_shape")
DEFAULT_SHAPES_SIZES = (2000, 200)


def is_latent_dataset(dataset: Dataset) -> bool:
    return all(column in dataset.column_names for column in LATENT_COLUMNS)


def load_caption_splits(data_args, seed: int) -> tuple[Dataset, Dataset]:
    """(train, eval) from `data_args.dataset_name`, or the shapes set when it is empty.

    For shapes, `max_train_samples` / `max_eval_samples` set how many images are drawn (default 2000 / 200);
    for other datasets they truncate.
    """
    if not data_args.dataset_name:
        train_size = data_args.max_train_samples or DEFAULT_SHAPES_SIZES[0]
        eval_size = data_args.max_eval_samples or DEFAULT_SHAPES_SIZES[1]
        data = shapes_splits(train=train_size, test=eval_size, seed=0)
        return data["train"], data["test"]
    return training_splits(load_any_dataset(data_args.dataset_name, data_args.dataset_config_name), data_args, seed)


def load_eval_split(dataset_name: str, split: str | None = None, max_samples: int | None = None,
                    config_name: str | None = None) -> tuple[Dataset, str]:
    """(dataset, split name) to score a saved captioner on: "shapes" (the built-in test split, `max_samples` images,
    default 200), or a Hub / local dataset's `split` (see `evaluation_split`), truncated to `max_samples`."""
    if dataset_name == "shapes":
        if split not in (None, "test"):
            raise ValueError(f"the built-in shapes set is evaluated on its test split, not {split!r}")
        return shapes_splits(train=0, test=max_samples or DEFAULT_SHAPES_SIZES[1], seed=0)["test"], "test"
    evaluation, split = evaluation_split(load_any_dataset(dataset_name, config_name), split, dataset_name)
    return first_rows(evaluation, max_samples), split


def check_caption_columns(dataset: Dataset, caption_column: str, image_column: str) -> None:
    """Raises a ValueError naming the missing column (the image column is needed unless the data are latents)."""
    needed = [caption_column] + ([] if is_latent_dataset(dataset) else [image_column])
    for column in needed:
        if column not in dataset.column_names:
            raise ValueError(
                f"dataset has no column {column!r}; columns: {dataset.column_names} (captioning needs an image "
                f"column and a caption column, or the latent columns {list(LATENT_COLUMNS)} and a caption column)"
            )


def captions_of(value) -> list[str]:
    """The captions of one example: a string, or a non-empty list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"a caption must be a string or a non-empty list of strings, got {value!r}")


def references_of(dataset: Dataset, caption_column: str, references_column: str | None) -> list[list[str]]:
    """Reference captions per example: `references_column` where the dataset has it, else the caption column."""
    column = references_column if references_column and references_column in dataset.column_names else caption_column
    return [captions_of(value) for value in dataset[column]]


def with_example_ids(dataset: Dataset) -> Dataset:
    """Adds `example_id` = row index (the key of the row's references)."""
    if "example_id" in dataset.column_names:
        dataset = dataset.remove_columns("example_id")
    return dataset.add_column("example_id", list(range(len(dataset))))


def encode_images_to_latents(
    dataset: Dataset, encode, image_column: str, fingerprint: str, batch_size: int = 32
) -> Dataset:
    """The dataset in the latent schema: `encode(list_of_PIL_images) -> (B, C, h, w)` latents, computed once.

    `datasets.map` caches the result (on disk for datasets loaded from files) under `fingerprint`, which must
    identify the encoder (its weights and input size): see `latent_cache_fingerprint`.
    """

    def encode_batch(batch):
        images = [image.convert("RGB") for image in batch[image_column]]
        latents = encode(images).float().cpu()
        return {
            "vae_latent": [latent.flatten().numpy() for latent in latents],
            "vae_latent_shape": [list(latent.shape) for latent in latents],
        }

    return dataset.map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        remove_columns=[image_column],
        new_fingerprint=fingerprint,
        desc="encoding images to VAE latents",
    )


def latent_cache_fingerprint(dataset: Dataset, vae: torch.nn.Module, image_size: int) -> str:
    """A cache key for `encode_images_to_latents`: the dataset fingerprint, the input size and the VAE weights."""
    digest = hashlib.sha256(f"{dataset._fingerprint}-{image_size}".encode())
    for name, tensor in vae.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]
