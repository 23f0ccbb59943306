"""Batch collators: rows of a caption or image-text dataset -> model inputs, one caption drawn per row and epoch."""

import numpy as np
import torch
from transformers import TrainerCallback

from .captioning import captions_of


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


class ContrastiveCollator(CaptionChoice):
    """Image-caption rows -> `pixel_values`, `input_ids`, `attention_mask` and `return_loss=True`. A row with several
    captions contributes one of them (see [`CaptionChoice`])."""

    def __init__(self, processor, caption_column: str, image_column: str, max_length: int, seed: int = 0):
        super().__init__(seed)
        self.processor, self.caption_column, self.image_column = processor, caption_column, image_column
        self.max_length = max_length

    def __call__(self, rows: list[dict]) -> dict:
        texts = [self.choose(row[self.caption_column], row.get("example_id")) for row in rows]
        images = [row[self.image_column].convert("RGB") for row in rows]
        batch = dict(self.processor(images=images, text=texts, max_length=self.max_length))
        batch["return_loss"] = True
        return batch
