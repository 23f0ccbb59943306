"""The contrastive task of `train.py` (DTP-CLIP): image-caption pairs, symmetric InfoNCE, zero-shot evaluation.

Data: the built-in single-object shapes set (default; every image has five paraphrased captions, one drawn per step;
zero-shot classes are the 18 "<colour> <shape>" names, prompted as "a photo of a red circle"), a Hub or local
dataset with an image and a caption column, or webdataset tar shards (LAION format: `{key}.jpg` + `{key}.txt`).
A dataset whose eval split has a ClassLabel `label_column` is also scored zero-shot with `zero_shot_template`.
"""

import glob
import logging
import os

from datasets import ClassLabel, load_dataset
from transformers import AutoTokenizer, CLIPTokenizer

from ..processing.processing_dtp_clip import DTPCLIPProcessor
from ..processing.processing_dtp_vit import build_image_processor
from . import shapes
from .captioning_data import CaptionChoice, EpochCallback, with_example_ids
from .data import load_any_dataset, split_for_eval
from .trainer import LeanTrainer
from .zero_shot import DEFAULT_TEMPLATE, prompts_for, zero_shot_accuracy

logger = logging.getLogger("leanvision.contrastive")

# Characters of the built-in tokenizer (no download): enough for English captions and prompts.
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'!?:;-"
_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def char_tokenizer(max_length: int = 64) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no BPE merges: each character with and without CLIP's end-of-word suffix),
    for DTP-CLIP models trained from scratch. Unknown characters map to `<|endoftext|>`."""
    tokens = _SPECIALS + list(_CHARS) + [c + "</w>" for c in _CHARS]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length)


def _webdataset_shards(name: str) -> list[str]:
    if os.path.isdir(name):
        return sorted(glob.glob(os.path.join(name, "*.tar")))
    return [name] if name.endswith(".tar") else []


def load_image_text_splits(data_args, seed: int):
    """(train, eval, caption column, image column, zero-shot spec or None) for the contrastive task.

    The zero-shot spec is `(label_column, prompts)` for an eval split with class labels.
    """
    name = data_args.dataset_name
    if not name:
        data = shapes.shapes_splits(
            train=data_args.max_train_samples or 2000, test=data_args.max_eval_samples or 300, seed=seed,
            max_objects=1,
        )
        prompts = [shapes.prompt(label) for label in shapes.class_names()]
        return data["train"], data["test"], "captions", "image", ("label_id", prompts)
    shards = _webdataset_shards(name)
    data = load_dataset("webdataset", data_files={"train": shards}) if shards else load_any_dataset(
        name, data_args.dataset_config_name
    )
    train, evaluation = split_for_eval(data, data_args.train_split, data_args.eval_split, data_args.eval_fraction,
                                       seed)
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    image_col = _column(train, data_args.image_column, ("jpg", "jpeg", "png", "webp"))
    caption_col = _column(train, data_args.caption_column, ("txt", "text", "caption", "captions"))
    labels = evaluation.features.get(data_args.label_column)
    zero_shot = None
    if isinstance(labels, ClassLabel):
        zero_shot = (data_args.label_column, prompts_for(labels.names, data_args.zero_shot_template))
    return train, evaluation, caption_col, image_col, zero_shot


def _column(dataset, preferred: str, fallbacks: tuple[str, ...]) -> str:
    for column in (preferred, *fallbacks):
        if column in dataset.column_names:
            return column
    raise ValueError(f"dataset has no column {preferred!r} (nor {list(fallbacks)}); columns: {dataset.column_names}")


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


class ContrastiveTrainer(LeanTrainer):
    """Evaluation = the contrastive loss on the eval pairs plus, when the eval split has class labels, zero-shot
    top-1 / top-5 accuracy of the prompts (gathered across ranks), logged as `eval_zero_shot_top1` / `_top5`."""

    def __init__(self, *args, zero_shot=None, image_column: str = "image", **kwargs):
        super().__init__(*args, **kwargs)
        self.zero_shot = zero_shot
        self.image_column = image_column

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.zero_shot is not None:
            label_column, prompts = self.zero_shot
            scores = zero_shot_accuracy(
                self.model, self.processing_class, eval_dataset or self.eval_dataset, prompts,
                image_column=self.image_column, label_column=label_column,
                batch_size=self.args.per_device_eval_batch_size, accelerator=self.accelerator,
            )
            scores = {f"{metric_key_prefix}_{key}": value for key, value in scores.items()}
            self.log(scores)
            metrics.update(scores)
        return metrics


def build_dtp_clip(family, model_args, overrides: dict):
    """DTP-CLIP model + processor: from a saved model, from a transformers CLIP checkpoint (`init_from_clip`; the
    overrides' `vision_config` entries set compression rate, layer split, ...), or new (character tokenizer)."""
    if model_args.model_name_or_path:
        model = family.model_class.from_pretrained(model_args.model_name_or_path)
        return model, DTPCLIPProcessor.from_pretrained(model_args.model_name_or_path)
    if model_args.init_from_clip:
        unknown = sorted(set(overrides) - {"vision_config"})
        if unknown:
            raise ValueError(f"with init_from_clip only `vision_config` overrides apply, got {unknown}")
        model = family.model_class.from_clip_pretrained(model_args.init_from_clip, **overrides.get("vision_config", {}))
        return model.train(), DTPCLIPProcessor.from_clip_pretrained(model_args.init_from_clip)
    tokenizer = (
        AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
        if model_args.tokenizer_name_or_path
        else char_tokenizer()
    )
    text = dict(overrides.pop("text_config", None) or {})
    text.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    text.setdefault("max_position_embeddings", min(tokenizer.model_max_length, 77))
    model = family.model_class(family.config_class(text_config=text, **overrides))
    image_size = model_args.image_size or model.config.vision_config.image_size
    return model, DTPCLIPProcessor(build_image_processor(image_size), tokenizer)


def setup_contrastive(family, model_args, data_args, training_args, overrides: dict) -> dict:
    """Model, processor, datasets, collator and `ContrastiveTrainer` arguments for DTP-CLIP."""
    train, evaluation, caption_col, image_col, zero_shot = load_image_text_splits(data_args, training_args.seed)
    model, processor = build_dtp_clip(family, model_args, overrides)
    max_length = min(processor.tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
    if zero_shot is not None:
        logger.info("zero-shot evaluation on %d images, %d prompts, e.g. %r", len(evaluation), len(zero_shot[1]),
                    zero_shot[1][0])
    collator = ContrastiveCollator(processor, caption_col, image_col, max_length, seed=training_args.seed)
    return dict(
        model=model,
        processor=processor,
        train_dataset=with_example_ids(train),
        eval_dataset=evaluation,
        data_collator=collator,
        callbacks=[EpochCallback(collator)],
        trainer_class=ContrastiveTrainer,
        trainer_kwargs=dict(zero_shot=zero_shot, image_column=image_col),
    )


def evaluate_zero_shot(model_dir: str, dataset_name: str, split: str | None = None, template: str = DEFAULT_TEMPLATE,
                       label_column: str = "label", image_column: str = "image", max_samples: int | None = None,
                       batch_size: int = 64, config_name: str | None = None) -> dict:
    """Zero-shot accuracy of a saved contrastive model on an image classification dataset: a JSON-ready report.

    `dataset_name` "shapes" is the built-in single-object shapes test split (prompts "a photo of a red circle");
    "digits" is scikit-learn's digits test split; otherwise a Hub / local dataset with a ClassLabel column.
    """
    from .data import digits_dataset
    from .families import family_of_model_dir, load_saved

    family = family_of_model_dir(model_dir)
    if family.task != "contrastive":
        raise ValueError(f"{model_dir!r} holds a {family.name} model, which has no text tower for zero-shot use")
    if dataset_name == "shapes":
        evaluation = shapes.shapes_splits(train=0, test=max_samples or 300, seed=0, max_objects=1)["test"]
        split, label_column = "test", "label_id"
        prompts = [shapes.prompt(label) for label in shapes.class_names()]
    else:
        data = digits_dataset() if dataset_name == "digits" else load_any_dataset(dataset_name, config_name)
        split = split or next((name for name in ("test", "validation", "train") if name in data), None)
        if split not in data:
            raise ValueError(f"dataset {dataset_name!r} has no split {split!r}; splits: {sorted(data)}")
        evaluation = data[split]
        labels = evaluation.features.get(label_column)
        if not isinstance(labels, ClassLabel):
            raise ValueError(
                f"zero-shot evaluation needs a ClassLabel column {label_column!r}; columns: {evaluation.features}"
            )
        prompts = prompts_for(labels.names, template)
        if max_samples:
            evaluation = evaluation.select(range(min(max_samples, len(evaluation))))
    _, model, processor = load_saved(model_dir)
    scores = zero_shot_accuracy(model, processor, evaluation, prompts, image_column=image_column,
                                label_column=label_column, batch_size=batch_size)
    return {
        "model": os.path.basename(os.path.normpath(model_dir)),
        "family": family.name,
        "dataset": dataset_name,
        "split": split,
        "num_samples": len(evaluation),
        "prompts": prompts,
        "scores": scores,
        "chance_top1": 1.0 / len(prompts),
    }
