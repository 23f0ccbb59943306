"""Processor for QVisionMultiModel: CLIP image processor + GPT-Neo (GPT-2 byte-level BPE) tokenizer."""

from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin

from .processing_common import check_texts, checked_pixel_values, warn_if_truncated


class QVisionProcessor(ProcessorMixin):
    r"""
    Wraps a CLIP image processor and a GPT-Neo / GPT-2 tokenizer. GPT-2 tokenizers have no pad token; the processor
    sets `pad = eos` (which is also `bos`, `<|endoftext|>`), so padding is tracked by the attention mask only.

    Captions are encoded as `[bos] caption [eos]`: generation starts from `bos`, and the one real `eos` teaches the
    model to stop. `labels` are the `input_ids` with every padded position (attention mask 0) set to -100.

    Args:
        image_processor (`CLIPImageProcessor`):
            The image processor (without torchvision, `CLIPImageProcessor` resolves to its PIL backend).
        tokenizer (`GPT2Tokenizer` / `PreTrainedTokenizerBase`):
            The GPT-Neo tokenizer.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained_backbones(cls, vision: str, text: str) -> "QVisionProcessor":
        """Processor for [`QVisionForConditionalGeneration.from_pretrained_backbones`] with the same checkpoints."""
        return cls(AutoImageProcessor.from_pretrained(vision), AutoTokenizer.from_pretrained(text))

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        add_eos_token: bool = True,
        padding: bool | str = "longest",
        max_length: int | None = None,
        padding_side: str | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """
        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*):
                Images, turned into `pixel_values`.
            text (`str` or `list[str]`, *optional*):
                Captions (training) or prompts (generation), turned into `input_ids`, `attention_mask`, `labels`.
            add_eos_token (`bool`, *optional*, defaults to `True`):
                End each text with `eos` (captions); pass `False` for prompts to continue.
            padding (`bool` or `str`, *optional*, defaults to `"longest"`):
                Tokenizer padding strategy (`"longest"`, `"max_length"`, `False`).
            max_length (`int`, *optional*):
                Total length including `bos` and `eos`; longer texts are truncated (with a warning) before `eos` is
                appended. Defaults to the tokenizer's `model_max_length`.
            padding_side (`str`, *optional*):
                `"right"` for training, `"left"` for batched generation from prompts of different lengths.
                Defaults to the tokenizer's side.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                Only `"pt"` (PyTorch tensors) is supported.
        """
        if images is None and text is None:
            raise ValueError("Pass `images`, `text`, or both.")
        if return_tensors != "pt":
            raise ValueError(f"`return_tensors` must be 'pt', got {return_tensors!r}.")

        data = {}
        if images is not None:
            data.update(checked_pixel_values(self.image_processor, images))
        if text is not None:
            data.update(self._encode_text(text, add_eos_token, padding, max_length, padding_side))
        return BatchFeature(data=data, tensor_type="pt")

    def _encode_text(self, text, add_eos_token, padding, max_length, padding_side) -> dict:
        check_texts(text)
        texts = [text] if isinstance(text, str) else list(text)
        tokenizer = self.tokenizer
        num_special = 1 + int(add_eos_token)
        if max_length is None and tokenizer.model_max_length < 1_000_000:  # "no limit" is stored as a huge number
            max_length = tokenizer.model_max_length
        warn_if_truncated(tokenizer, texts, max_length)
        if max_length is not None and max_length <= num_special:
            raise ValueError(f"`max_length` must leave room for text after bos/eos, got {max_length}.")
        token_ids = tokenizer(
            texts,
            add_special_tokens=False,
            truncation=max_length is not None,
            max_length=None if max_length is None else max_length - num_special,
        )["input_ids"]
        eos = [tokenizer.eos_token_id] if add_eos_token else []
        sequences = [[tokenizer.bos_token_id, *ids, *eos] for ids in token_ids]
        batch = tokenizer.pad(
            {"input_ids": sequences},
            padding=padding,
            max_length=max_length,
            padding_side=padding_side,
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def batch_decode(self, *args, **kwargs) -> list[str]:
        """Forwarded to the tokenizer's `batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        """Forwarded to the tokenizer's `decode`."""
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["QVisionProcessor"]
