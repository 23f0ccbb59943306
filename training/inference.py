"""Inference with a saved model: captioning (load it, choose a decoding mode, generate and decode captions: `leanvision
caption`, `leanvision evaluate`, evaluation during training and the ablation) and image classification (class
probabilities of a classifier, or zero-shot of a contrastive model: `leanvision classify`)."""

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.collators import CaptionCollator
from .families import family_of_model_dir, load_saved

# Batch keys that are not vision inputs of `generate()`.
TEXT_KEYS = ("input_ids", "attention_mask", "labels", "example_id")


def generation_inputs(batch: dict) -> dict:
    """The vision inputs of a batch (`pixel_values`, or `latents` + `latent_mask`): everything but the text."""
    return {key: value for key, value in batch.items() if key not in TEXT_KEYS}


def decode_captions(processor, token_ids) -> list[str]:
    """Generated ids (padding may be -100) to stripped captions without special tokens."""
    tokenizer = processor.tokenizer
    ids = np.asarray(token_ids.cpu() if isinstance(token_ids, torch.Tensor) else token_ids)
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]


def load_captioner(model_dir: str):
    """(family, model in eval mode, processor) of a saved or exported captioning model folder."""
    family = family_of_model_dir(model_dir)
    if family.task != "captioning":
        raise ValueError(f"{model_dir!r} holds a {family.name} model, which does not caption images")
    return load_saved(model_dir)


def decoding_kwargs(greedy: bool = False, beams: int | None = None, temperature: float | None = None,
                    max_new_tokens: int = 40) -> dict:
    """`generate()` arguments for one decoding mode: greedy (default), beam search, or temperature sampling."""
    if sum([bool(greedy), beams is not None, temperature is not None]) > 1:
        raise ValueError("choose one decoding mode: greedy, beams or temperature")
    if beams is not None and beams < 1:
        raise ValueError(f"beams must be at least 1, got {beams}")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    if beams is not None:
        kwargs["num_beams"] = beams
    if temperature is not None:
        kwargs.update(do_sample=True, temperature=temperature, top_k=0)
    return kwargs


def caption_images(model, processor, images, generation_kwargs: dict, batch_size: int = 16) -> list[str]:
    """Captions of PIL images: `processor(images=...)` -> `generate()` -> decoded text, batch by batch."""
    captions = []
    for start in range(0, len(images), batch_size):
        chunk = [image.convert("RGB") for image in images[start : start + batch_size]]
        inputs = processor(images=chunk)
        with torch.no_grad():
            captions.extend(decode_captions(processor, model.generate(**inputs, **generation_kwargs)))
    return captions


def progress_bar(total: int, description: str, show: bool = False):
    """A tqdm bar on stderr when `show` and stderr is a terminal; a silent counter otherwise."""
    return tqdm(total=total, desc=description, unit="img", disable=None if show else True, leave=False)


def caption_dataset(model, processor, dataset, generation_kwargs: dict, image_column: str = "image",
                    batch_size: int = 32, progress: bool = False) -> list[str]:
    """Captions of every row of an image or latent caption dataset, in order; `progress` shows a bar on a
    terminal."""
    collator = CaptionCollator(processor, caption_column="", image_column=image_column, max_length=1)
    captions = []
    bar = progress_bar(len(dataset), "captioning", progress)
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        with torch.no_grad():
            generated = model.generate(**collator.vision_inputs(rows), **generation_kwargs)
        captions.extend(decode_captions(processor, generated))
        bar.update(len(rows))
    bar.close()
    return captions


CLASSIFYING_TASKS = ("image_classification", "contrastive")


def load_classifier(model_dir: str):
    """(family, model in eval mode, processor) of a saved or exported classifier (DTP-ViT) or contrastive model
    (DTP-CLIP, zero-shot)."""
    family = family_of_model_dir(model_dir)
    if family.task not in CLASSIFYING_TASKS:
        raise ValueError(f"{model_dir!r} holds a {family.name} model, which does not classify images")
    return load_saved(model_dir)


@torch.no_grad()
def class_probabilities(family, model, processor, images, labels: list[str] | None = None,
                        template: str | None = None, batch_size: int = 32) -> tuple[torch.Tensor, list[str]]:
    """(probabilities `(N, C)`, class names) of PIL images. A classifier: softmax of its logits over
    `config.id2label`. A contrastive model: softmax over `labels` of `exp(logit_scale) cos(image, prompt(label))`,
    each label prompted with `template` (the zero-shot pipeline's rule)."""
    from .evaluation.zero_shot import DEFAULT_TEMPLATE, prompts_for

    if family.task == "contrastive":
        labels = [label.strip() for label in labels or [] if label.strip()]
        if not labels:
            raise ValueError(f"a {family.name} model classifies zero-shot: give the candidate labels (--labels a,b,c)")
        prompts = prompts_for(labels, template or DEFAULT_TEMPLATE)
    elif labels:
        raise ValueError(f"a {family.name} model has its own classes; candidate labels apply to zero-shot models only")
    else:
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    chunks = []
    for start in range(0, len(images), batch_size):
        chunk = [image.convert("RGB") for image in images[start : start + batch_size]]
        if family.task == "contrastive":
            inputs = processor(images=chunk, text=prompts)
            logits = model(**inputs.to(model.device)).logits_per_image
        else:
            logits = model(pixel_values=processor(images=chunk, return_tensors="pt")["pixel_values"]).logits
        chunks.append(logits.float().softmax(-1).cpu())
    return torch.cat(chunks), labels


def top_labels(probabilities: torch.Tensor, names: list[str], k: int = 5) -> list[list[dict]]:
    """Per image, the `k` most probable classes (at most all of them) as `{"label", "score"}`, best first."""
    if k < 1:
        raise ValueError(f"top-k must be at least 1, got {k}")
    scores, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=-1)
    return [[{"label": names[i], "score": float(s)} for s, i in zip(row_s.tolist(), row_i.tolist())]
            for row_s, row_i in zip(scores, indices)]
