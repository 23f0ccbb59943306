"""Contrastive (CLIP-style) training set-up for DTP-CLIP: image-caption pairs and zero-shot evaluation."""

import glob
import os

import torch
from transformers import AutoTokenizer, CLIPTokenizer

from ..processing.processing_dtp_clip import DTPCLIPProcessor
from ..processing.processing_dtp_vit import build_image_processor
from .data import load_any_dataset, split_for_eval
from .shapes import class_names as shapes_class_names
from .shapes import shapes_splits
from .tasks import TaskSetup, parse_config_overrides

# Characters of the shapes captions and prompts; the built-in tokenizer is character level (no download needed).
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,'-"
_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def build_char_tokenizer(max_length: int = 64) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no BPE merges) for models trained from scratch without a download."""
    chars = sorted(set(_CHARS) - {" "})
    tokens = list(_SPECIALS) + chars + [c + "</w>" for c in chars]
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length,
        bos_token=_SPECIALS[0], eos_token=_SPECIALS[1], pad_token=_SPECIALS[1], unk_token=_SPECIALS[1],
    )


def load_image_text_data(data_args, seed: int):
    """(train, eval, class names or None): webdataset shards, a Hub/local image-caption dataset, or shapes."""
    name = data_args.dataset_name
    if not name:
        data = shapes_splits(train=2000, test=300, seed=seed, max_objects=1)
        return data["train"], data["test"], shapes_class_names()
    shards = sorted(glob.glob(os.path.join(name, "*.tar"))) if os.path.isdir(name) else (
        [name] if name.endswith(".tar") else []
    )
    if shards:  # LAION-style webdataset shards: {key}.jpg + {key}.txt
        from datasets import load_dataset

        data = load_dataset("webdataset", data_files={"train": shards})
    else:
        data = load_any_dataset(name, data_args.dataset_config_name)
    train, evaluation = split_for_eval(data, data_args.train_split, data_args.eval_split, data_args.eval_fraction, seed)
    return train, evaluation, None


def _column(dataset, preferred: str, fallbacks: tuple[str, ...]) -> str:
    for column in (preferred, *fallbacks):
        if column in dataset.column_names:
            return column
    raise ValueError(f"dataset has no column {preferred!r}; columns: {dataset.column_names}")


def setup_contrastive(family, model_args, data_args, training_args) -> TaskSetup:
    from ..modeling.modeling_dtp_clip import DTPCLIPModel

    train, evaluation, class_names = load_image_text_data(data_args, training_args.seed)
    image_col = _column(train, data_args.image_column, ("jpg", "png", "jpeg", "webp"))
    caption_col = _column(train, getattr(data_args, "caption_column", "caption"), ("txt", "text", "caption"))
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.model_name_or_path:
        model = DTPCLIPModel.from_pretrained(model_args.model_name_or_path, **overrides)
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    elif getattr(model_args, "init_from_clip", None):
        model = DTPCLIPModel.from_clip_pretrained(model_args.init_from_clip, **overrides.get("vision_config", {}))
        tokenizer = AutoTokenizer.from_pretrained(model_args.init_from_clip)
    else:
        tokenizer = build_char_tokenizer()
        text = dict(overrides.pop("text_config", {}))
        text.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        text.setdefault("max_position_embeddings", tokenizer.model_max_length)
        model = family.model_class(family.config_class(text_config=text, **overrides))
    processor = DTPCLIPProcessor(build_image_processor(model.config.vision_config.image_size), tokenizer)
    max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
    label_ids = {name: i for i, name in enumerate(class_names or [])}

    def transform(batch):
        images = [image.convert("RGB") for image in batch[image_col]]
        out = processor(images=images, text=[str(c) for c in batch[caption_col]], padding="max_length",
                        max_length=max_length)
        rows = dict(out)
        if class_names is not None:
            rows["labels"] = torch.tensor([label_ids[label] for label in batch["label"]])
        return rows

    def collate(rows):
        batch = {k: torch.stack([r[k] for r in rows]) for k in ("pixel_values", "input_ids", "attention_mask")}
        batch["return_loss"] = True
        return batch

    zero_shot = None
    if class_names is not None:
        from .zero_shot import zero_shot_accuracy

        eval_rows = evaluation.with_transform(transform)

        def zero_shot(model, accelerator):
            return zero_shot_accuracy(model, processor, eval_rows, class_names, accelerator=accelerator)

    return TaskSetup(
        model=model,
        processor=processor,
        train_dataset=train.with_transform(transform),
        eval_dataset=evaluation.with_transform(transform),
        data_collator=collate,
        extra_evaluation=zero_shot,
    )
