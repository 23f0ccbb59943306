"""Captioning data for every captioning family: sources, latent caching, tokenizer fallback and the batch collator.

Three sources give a (train, eval) pair of `datasets.Dataset`s:

- the built-in shapes set (`training/shapes.py`: image, canonical `caption`, five reference `captions`);
- a Hub or local dataset with an image column and a caption column (one string, or a list of strings per image);
- a dataset of VAE latents in the coco30k schema: `vae_latent` (flattened float32), `vae_latent_shape`
  (e.g. `[4, 26, 38]`) and `caption`.

Families that read latents (GatedSparseBlip) turn image data into the latent schema once, with their frozen VAE and
`datasets.map`, so training never runs the VAE. Every eval example carries an `example_id`, the index of its
references, so generated captions can be matched to them after a cross-rank gather.
"""

import hashlib
import re
from collections import Counter

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback

from .data import load_any_dataset, split_for_eval
from .shapes import shapes_splits

LATENT_COLUMNS = ("vae_latent", "vae_latent_shape")
DEFAULT_SHAPES_SIZES = (2000, 200)
_WORD = re.compile(r"\w+|[^\w\s]")


def is_latent_dataset(dataset: Dataset) -> bool:
    return all(column in dataset.column_names for column in LATENT_COLUMNS)


def resolve_eval_split(data, requested: str | None) -> str | None:
    """The eval split name: `requested`, or for "auto" / None "test", else "validation", else None (carve one)."""
    if requested not in (None, "auto"):
        return requested
    return next((name for name in ("test", "validation") if name in data), None)


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
    data = load_any_dataset(data_args.dataset_name, data_args.dataset_config_name)
    eval_split = resolve_eval_split(data, data_args.eval_split)
    train, evaluation = split_for_eval(data, data_args.train_split, eval_split, data_args.eval_fraction, seed)
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation


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


def word_level_tokenizer(captions: list[str], max_vocab: int = 30000):
    """A BERT WordPiece tokenizer whose vocabulary is the words of `captions` (most frequent first, at most
    `max_vocab`), with BLIP's special tokens and `[DEC]` as `bos_token`: for models trained from scratch."""
    from transformers import BertTokenizer

    counts = Counter(word for caption in captions for word in _WORD.findall(caption.lower()))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [word for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][: max_vocab - len(specials)]
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(specials + words)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


class CaptionChoice:
    """Picks one caption of a row that holds several: a draw keyed by (seed, epoch, `example_id`), so every epoch
    draws afresh and a resumed run sees exactly the captions the uninterrupted run saw (a collator's own running
    random state would not survive a resume: the Trainer skips the consumed batches without collating them).
    `epoch` is kept current by [`EpochCallback`]; rows without an `example_id` draw from a seeded stream."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.epoch = 0
        self.rng = np.random.default_rng(seed)

    def choose(self, value, example_id=None) -> str:
        options = captions_of(value)
        if len(options) == 1:
            return options[0]
        rng = self.rng if example_id is None else np.random.default_rng([self.seed, self.epoch, int(example_id)])
        return options[int(rng.integers(len(options)))]


class EpochCallback(TrainerCallback):
    """Tells a [`CaptionChoice`] the epoch being trained (also after a resume)."""

    def __init__(self, choice: CaptionChoice):
        self.choice = choice

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.choice.epoch = int(state.epoch or 0)


class CaptionCollator(CaptionChoice):
    """Builds model batches from rows of a caption dataset.

    Vision inputs: `processor(latents=[(C, h_i, w_i), ...])` (padded, with `latent_mask` unless every latent has the
    same size) for latent rows, `processor(images=...)` for image rows. Text: `processor(text=captions,
    max_length=...)`; `labels` are `input_ids` with every padded position set to -100. A row whose caption column
    holds several captions contributes one of them (see [`CaptionChoice`]). `example_id` is passed through when
    present.
    """

    def __init__(self, processor, caption_column: str, image_column: str, max_length: int, seed: int = 0):
        super().__init__(seed)
        self.processor = processor
        self.caption_column = caption_column
        self.image_column = image_column
        self.max_length = max_length

    def vision_inputs(self, rows: list[dict]) -> dict:
        if "vae_latent" in rows[0]:
            latents = [
                torch.tensor(np.asarray(row["vae_latent"], dtype=np.float32)).view(*row["vae_latent_shape"])
                for row in rows
            ]
            if len({tuple(latent.shape) for latent in latents}) == 1:
                return dict(self.processor(latents=torch.stack(latents)))
            return dict(self.processor(latents=latents))
        images = [row[self.image_column].convert("RGB") for row in rows]
        return dict(self.processor(images=images))

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.vision_inputs(rows)
        text = self.processor(
            text=[self.choose(row[self.caption_column], row.get("example_id")) for row in rows],
            max_length=self.max_length,
        )
        batch["input_ids"] = text["input_ids"]
        batch["attention_mask"] = text["attention_mask"]
        batch["labels"] = text["input_ids"].masked_fill(text["attention_mask"] == 0, -100)
        if "example_id" in rows[0]:
            batch["example_id"] = torch.tensor([[row["example_id"]] for row in rows])
        return batch
