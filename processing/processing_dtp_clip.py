"""Processor for DTP-CLIP: CLIP image processor (PIL backend without torchvision) + CLIP tokenizer."""

from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin

from .processing_common import checked_pixel_values, warn_if_truncated


class DTPCLIPProcessor(ProcessorMixin):
    r"""
    Wraps a CLIP image processor and a CLIP tokenizer (the same pair as transformers' `CLIPProcessor`).

    The image processor is saved as `image_processor_type: CLIPImageProcessor`, so any transformers install loads it
    (the fast torchvision class where torchvision exists, `CLIPImageProcessorPil` otherwise). The zero-shot
    pipeline loads the image processor and the tokenizer from the saved folder on its own.

    Args:
        image_processor (`CLIPImageProcessor` / `CLIPImageProcessorPil`): turns images into `pixel_values`.
        tokenizer (`CLIPTokenizer`): turns texts into `input_ids` and `attention_mask` (ending in `eos`).
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_clip_pretrained(cls, name_or_path: str) -> "DTPCLIPProcessor":
        """The processor of a transformers CLIP checkpoint, for [`DTPCLIPModel.from_clip_pretrained`]."""
        return cls(AutoImageProcessor.from_pretrained(name_or_path), AutoTokenizer.from_pretrained(name_or_path))

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        padding: bool | str = "longest",
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """
        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*): images.
            text (`str` or `list[str]`, *optional*): texts (captions or prompts).
            padding (`bool` or `str`, *optional*, defaults to `"longest"`): tokenizer padding strategy.
            truncation (`bool`, *optional*, defaults to `True`): cut texts to `max_length` (the tokenizer's
                `model_max_length`, 77 for CLIP, when not given), keeping `eos`.
            max_length (`int`, *optional*): maximum text length in tokens, `bos` and `eos` included.
            return_tensors (`str`, *optional*, defaults to `"pt"`): tensor type.
        """
        if images is None and text is None:
            raise ValueError("Pass `images`, `text`, or both.")
        if text is not None and not isinstance(text, str) and len(text) == 0:
            raise ValueError(
                "`text` is an empty list: pass at least one text (zero-shot classification: at least one candidate "
                "label)."
            )
        data = {}
        if text is not None:
            if truncation:
                texts = [text] if isinstance(text, str) else list(text)
                warn_if_truncated(self.tokenizer, texts, max_length or self.tokenizer.model_max_length)
            data.update(
                self.tokenizer(
                    text, padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors
                )
            )
        if images is not None:
            data.update(checked_pixel_values(self.image_processor, images, return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["DTPCLIPProcessor"]
