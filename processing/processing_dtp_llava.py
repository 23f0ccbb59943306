"""Processor for DTP-LLaVA: CLIP image processor + the language model's tokenizer + a chat template."""

from transformers import BatchFeature, ProcessorMixin

from .processing_common import checked_pixel_values, warn_if_truncated

IMAGE_TOKEN = "<image>"
END_TOKEN = "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Every message is `<|role|>content<|end|>`; an image item is one `<image>` token, which the model replaces by the
# image's own visual tokens. The assistant's turn ends with `<|end|>`, the tokenizer's eos: generation stops there.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


def add_chat_tokens(tokenizer):
    """Adds the chat tokens to `tokenizer` as special tokens, in place; returns it. A tokenizer with its own chat
    template (an instruct language model's) gets `<image>` only and keeps its eos; any other gets the tokens of
    `DEFAULT_CHAT_TEMPLATE` too (the role markers, `<|end|>` as eos). Eos also pads when the tokenizer has no pad
    token. Resize the language model's embeddings to `len(tokenizer)` afterwards."""
    if tokenizer.chat_template:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    else:
        tokenizer.add_special_tokens(
            {"eos_token": END_TOKEN, "additional_special_tokens": [IMAGE_TOKEN, *ROLE_TOKENS]},
            replace_extra_special_tokens=False,
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def text_content(content: list[dict], image_token: str = IMAGE_TOKEN) -> str:
    """A message's content items as one string, for chat templates that read `message['content']` as a string (an
    instruct language model's own): an image item becomes `image_token`, a text item its text, joined by newlines
    (LLaVA's `<image>\nquestion`)."""
    parts = []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "image":
            parts.append(image_token)
        elif kind == "text":
            parts.append(item["text"])
        else:
            raise ValueError(f"DTP-LLaVA message content holds image and text items, got {item!r}")
    return "\n".join(parts)


def _image_values(messages: list[dict]) -> list:
    """The images of a conversation's image items, in order (the keys transformers' processors read)."""
    return [
        item[key]
        for message in messages if isinstance(message.get("content"), list)
        for item in message["content"] if isinstance(item, dict) and item.get("type") == "image"
        for key in ("image", "url", "path", "base64") if key in item
    ]


def _flat_images(images) -> list:
    """A list of images from one image, a list, or `apply_chat_template`'s list of per-conversation lists."""
    if not isinstance(images, (list, tuple)):
        return [images]
    flat = []
    for item in images:
        flat.extend(_flat_images(item) if isinstance(item, (list, tuple)) else [item])
    return flat


class DTPLlavaProcessor(ProcessorMixin):
    r"""
    Wraps an image processor (CLIP's, at the tower's size) and the language model's tokenizer, with a chat template.

    Unlike transformers' `LlavaProcessor`, the text keeps ONE `<image>` token per image: the model expands it to
    that image's own number of visual tokens, which a DTP tower decides from the content.
    `processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)` takes
    `{"type": "image", "image": ...}` items in the messages as transformers' LLaVA processor does.

    Args:
        image_processor (`CLIPImageProcessor` / `CLIPImageProcessorPil`): turns images into `pixel_values`.
        tokenizer (`PreTrainedTokenizerBase`): holds `image_token` as one token (see `add_chat_tokens`).
        chat_template (`str`, *optional*): Jinja chat template; `DEFAULT_CHAT_TEMPLATE` when not given. A template
            that reads `message['content']` as a string (an instruct language model's own) gets each content list as
            one string (`text_content`), with `<image>` where the image item was.
        image_token (`str`, *optional*, defaults to `"<image>"`): the placeholder of one image.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token=IMAGE_TOKEN, **kwargs):
        self.image_token = image_token
        if tokenizer is not None:
            ids = tokenizer.encode(image_token, add_special_tokens=False)
            if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
                raise ValueError(
                    f"the tokenizer must hold {image_token!r} as one token (it encodes to {ids}): add it with "
                    "add_chat_tokens(tokenizer) and resize the model's embeddings"
                )
            self.image_token_id = ids[0]
        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE, **kwargs)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        videos=None,
        audio=None,
        padding: bool | str = "longest",
        truncation: bool = False,
        max_length: int | None = None,
        padding_side: str | None = None,
        add_special_tokens: bool = False,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a (nested) list of them, *optional*): the
                images, in the order of their `<image>` tokens in `text`.
            text (`str` or `list[str]`, *optional*): prompts or whole conversations, rendered by the chat template.
            padding (`bool` or `str`, *optional*, defaults to `"longest"`): tokenizer padding strategy (the model
                accepts either padding side).
            truncation (`bool`, *optional*, defaults to `False`): cut texts to `max_length`; a cut that loses an
                image token is an error.
            max_length (`int`, *optional*): maximum text length in tokens.
            padding_side (`str`, *optional*): `"left"` or `"right"`; the tokenizer's side by default.
            add_special_tokens (`bool`, *optional*, defaults to `False`): the chat template already writes every
                special token.
            return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"`.
        """
        if videos is not None or audio is not None:
            raise ValueError("DTPLlavaProcessor takes images and text only")
        if images is None and text is None:
            raise ValueError("Pass `images`, `text`, or both.")
        if return_tensors != "pt":
            raise ValueError(f"`return_tensors` must be 'pt', got {return_tensors!r}.")
        data = {}
        if images is not None:
            images = _flat_images(images)
            data.update(checked_pixel_values(self.image_processor, images))
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not texts:
                raise ValueError("`text` is an empty list: pass at least one text.")
            num_placeholders = sum(t.count(self.image_token) for t in texts)
            num_images = 0 if images is None else len(images)
            if num_placeholders != num_images:
                raise ValueError(
                    f"the text holds {num_placeholders} {self.image_token!r} token(s) for {num_images} image(s): "
                    "write one per image (chat messages: one {'type': 'image'} item per image)"
                )
            if truncation:
                warn_if_truncated(self.tokenizer, texts, max_length or self.tokenizer.model_max_length)
            encoded = self.tokenizer(
                texts, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                max_length=max_length, padding_side=padding_side, return_tensors="pt",
            )
            if int((encoded["input_ids"] == self.image_token_id).sum()) != num_placeholders:
                raise ValueError(f"truncation to {max_length} tokens cut an {self.image_token!r} token: raise max_length")
            data.update(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        return BatchFeature(data=data, tensor_type="pt")

    def _reads_content_lists(self, template: str) -> bool:
        """Whether `template` renders a list of content items itself (as `DEFAULT_CHAT_TEMPLATE` and LLaVA's
        templates do); a text-only template fails on one or prints the list."""
        probe = [{"role": "user", "content": [{"type": "text", "text": "probe"}]}]
        try:
            text = super().apply_chat_template(probe, chat_template=template, tokenize=False)
        except Exception:  # e.g. `'<|im_start|>' + message['content']` on a list
            return False
        return "probe" in text and "'type'" not in text

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """transformers' `ProcessorMixin.apply_chat_template`; under a template that reads contents as strings, each
        content list is first joined by `text_content`, and its images still go to the image processor."""
        named = self.chat_template if isinstance(self.chat_template, dict) else {}
        template = named.get(chat_template or "default", chat_template or self.chat_template)
        if not isinstance(template, str) or self._reads_content_lists(template):
            return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)
        conversation = getattr(conversation, "messages", conversation)
        batched = bool(conversation) and not isinstance(conversation[0], dict)
        conversations = list(conversation) if batched else [conversation]
        flat = [
            [{**m, "content": text_content(m["content"], self.image_token)} if isinstance(m.get("content"), list)
             else m for m in getattr(messages, "messages", messages)]
            for messages in conversations
        ]
        images = [_image_values(getattr(messages, "messages", messages)) for messages in conversations]
        if kwargs.get("tokenize") and any(images):
            kwargs["processor_kwargs"] = {**(kwargs.get("processor_kwargs") or {}),
                                          "images": images if batched else images[0]}
        return super().apply_chat_template(flat if batched else flat[0], chat_template=chat_template, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["DEFAULT_CHAT_TEMPLATE", "DTPLlavaProcessor", "add_chat_tokens", "text_content"]
