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


def conversation_messages(turns: list[dict], image_token: str = "<image>") -> list[dict]:
    """LLaVA turns (`{"from": "human" | "gpt", "value": ...}`) -> chat messages: "human" is the user, "gpt" the
    assistant, and each `image_token` in a value becomes an `{"type": "image"}` item (the newline after it, LLaVA's
    separator, is dropped)."""
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    messages = []
    for turn in turns:
        if turn["from"] not in roles:
            raise ValueError(f"unknown conversation role {turn['from']!r}; expected one of {sorted(roles)}")
        pieces = turn["value"].split(image_token)
        content = [{"type": "text", "text": pieces[0].strip()}] if pieces[0].strip() else []
        for piece in pieces[1:]:
            content.append({"type": "image"})
            if piece.strip():
                content.append({"type": "text", "text": piece.strip()})
        messages.append({"role": roles[turn["from"]], "content": content})
    return messages


class ConversationCollator:
    """Rows of LLaVA-format conversations (`data/conversations.py`) -> DTP-LLaVA batches.

    Each row is rendered by the processor's chat template; `labels` keep the tokens of every assistant turn (its text
    and the end token the template closes it with, nothing the template writes after that) and are -100 elsewhere:
    prompts, image tokens, padding. A turn's span is found by rendering the conversation up to the turn's start (with
    the generation prompt) and up to its end, whose tokens must prefix the whole conversation's. Rows are
    right-padded; a row longer than `max_length` tokens is cut at the end (an error if the cut loses its image token).
    """

    def __init__(self, processor, image_column: str = "image", max_length: int | None = None):
        self.processor = processor
        self.image_column = image_column
        self.max_length = max_length

    def _tokens(self, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
        text = self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, turns: list[dict]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one conversation."""
        messages = conversation_messages(turns, self.processor.image_token)
        input_ids = self._tokens(messages)
        labels = [-100] * len(input_ids)
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = self._tokens(messages[:index], add_generation_prompt=True)
            end = self._tokens(messages[: index + 1])
            if input_ids[: len(start)] != start or input_ids[: len(end)] != end:
                raise ValueError("the chat template's tokens of a conversation prefix differ from the whole's")
            stop = len(end)
            # The turn ends at its last end token: what a template writes after it (ChatML's "\n") is not the answer.
            span = input_ids[len(start) : stop]
            eos = self.processor.tokenizer.eos_token_id
            if eos in span:
                stop = len(start) + len(span) - span[::-1].index(eos)
            labels[len(start) : stop] = input_ids[len(start) : stop]
        if self.max_length is not None and len(input_ids) > self.max_length:
            if self.processor.image_token_id in input_ids[self.max_length :]:
                raise ValueError(f"a conversation's image token lies beyond max_length={self.max_length} tokens")
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        return input_ids, labels

    def __call__(self, rows: list[dict]) -> dict:
        encoded = [self.encode(row["conversations"]) for row in rows]
        length = max(len(ids) for ids, _ in encoded)
        pad = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (ids, row_labels) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(ids)] = torch.tensor(row_labels)
            attention_mask[i, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        images = [row[self.image_column].convert("RGB") for row in rows if row.get(self.image_column) is not None]
        if images:
            batch["pixel_values"] = self.processor(images=images)["pixel_values"]
        return batch
