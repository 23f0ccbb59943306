"""Processor for GatedSparseBlip: images for the VAE, padded latent batches and BLIP-style caption tokens."""

import torch
from transformers import AutoTokenizer, BlipImageProcessorPil
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .processing_common import check_texts, checked_pixel_values, warn_if_truncated


class GatedSparseBlipProcessor(ProcessorMixin):
    r"""
    Image processor + BERT tokenizer, as `BlipProcessor`, for [`GatedSparseBlipForConditionalGeneration`].

    - `images` become `pixel_values` for the model's frozen VAE: resized to the VAE input size and normalised to
      [-1, 1] (mean = std = 0.5), e.g. `BlipImageProcessorPil(size={"height": 256, "width": 256}, image_mean=[0.5] * 3,
      image_std=[0.5] * 3)`.
    - `latents` (a list of `(channels, h_i, w_i)` tensors, or one `(batch, channels, h, w)` tensor) become `latents`
      and, for a list, a `latent_mask` (see [`~GatedSparseBlipProcessor.pad_latents`]).
    - `text` becomes `input_ids` laid out as BLIP's decoder expects, `[DEC] caption [SEP] [PAD]...`: the tokenizer's
      leading `[CLS]` is replaced by its `bos_token` (`[DEC]`), padding is on the right. `labels` are `input_ids`
      with padding set to -100 (the model shifts them).

    Args:
        image_processor: A transformers image processor producing `pixel_values` in [-1, 1].
        tokenizer: A BERT tokenizer with a `bos_token` (BLIP adds `[DEC]`) and a `cls_token`.
    """

    def __init__(self, image_processor, tokenizer, **kwargs):
        if tokenizer.bos_token_id is None or tokenizer.cls_token_id is None:
            raise ValueError(
                "The tokenizer needs a `cls_token` and a `bos_token` (BLIP uses "
                "`tokenizer.add_special_tokens({'bos_token': '[DEC]'})`)."
            )
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "latents", "latent_mask", "input_ids", "attention_mask"]

    @staticmethod
    def pad_latents(latents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        r"""
        Pad latents of different sizes into one batch.

        Each `(channels, h_i, w_i)` latent is copied to the top-left `[:, :h_i, :w_i]` corner of a zero tensor of
        size `(channels, max h_i, max w_i)`. The returned `latent_mask` `(batch, max h_i, max w_i)` (long) is 1 on
        that corner and 0 on the padding. With `h_i`, `w_i` multiples of the model's `latent_patch_size`, padding
        covers whole patches, as the model requires.
        """
        if len(latents) == 0:
            raise ValueError("`latents` is an empty list.")
        latents = [torch.as_tensor(latent) for latent in latents]
        if any(latent.ndim != 3 for latent in latents):
            raise ValueError(
                f"Each latent must have shape (channels, height, width), got {[tuple(x.shape) for x in latents]}."
            )
        channels = {latent.shape[0] for latent in latents}
        if len(channels) != 1:
            raise ValueError(f"All latents must have the same number of channels, got {sorted(channels)}.")
        height = max(latent.shape[1] for latent in latents)
        width = max(latent.shape[2] for latent in latents)
        batch = latents[0].new_zeros(len(latents), channels.pop(), height, width)
        latent_mask = torch.zeros(len(latents), height, width, dtype=torch.long)
        for index, latent in enumerate(latents):
            batch[index, :, : latent.shape[1], : latent.shape[2]] = latent
            latent_mask[index, : latent.shape[1], : latent.shape[2]] = 1
        return batch, latent_mask

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        latents: torch.Tensor | list[torch.Tensor] | None = None,
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
    ) -> BatchFeature:
        r"""
        Returns a `BatchFeature` of PyTorch tensors with `pixel_values` (from `images`), `latents` (+ `latent_mask`
        for a list of latents), and `input_ids`, `attention_mask`, `labels` (from `text`).
        """
        if images is None and latents is None and text is None:
            raise ValueError("Pass at least one of `images`, `latents` and `text`.")
        if images is not None and latents is not None:
            raise ValueError("Pass either `images` or `latents`, not both.")

        data = {}
        if images is not None:
            data["pixel_values"] = checked_pixel_values(self.image_processor, images)["pixel_values"]
        if isinstance(latents, (list, tuple)):
            data["latents"], data["latent_mask"] = self.pad_latents(latents)
        elif latents is not None:
            data["latents"] = torch.as_tensor(latents)
        if text is not None:
            check_texts(text)
            if truncation:
                texts = [text] if isinstance(text, str) else list(text)
                warn_if_truncated(self.tokenizer, texts, max_length or self.tokenizer.model_max_length)
            encoding = self.tokenizer(
                text,
                padding=padding,
                truncation=truncation,
                max_length=max_length,
                padding_side="right",
                return_token_type_ids=False,
                return_tensors="pt",
            )
            input_ids = encoding["input_ids"].clone()
            if not (input_ids[:, 0] == self.tokenizer.cls_token_id).all():
                raise ValueError("Expected the tokenizer to start every text with its `cls_token`.")
            input_ids[:, 0] = self.tokenizer.bos_token_id
            data["input_ids"] = input_ids
            data["attention_mask"] = encoding["attention_mask"]
            data["labels"] = input_ids.masked_fill(encoding["attention_mask"] == 0, -100)
        return BatchFeature(data=data)

    @classmethod
    def from_blip_pretrained(cls, pretrained_model_name_or_path, image_size: int = 256, **tokenizer_kwargs):
        """Tokenizer from a BLIP checkpoint folder plus an image processor for a VAE with `image_size` inputs."""
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **tokenizer_kwargs)
        image_processor = BlipImageProcessorPil(
            size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        return cls(image_processor=image_processor, tokenizer=tokenizer)


__all__ = ["GatedSparseBlipProcessor"]
