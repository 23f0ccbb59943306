"""The contrastive task of `train.py` (DTP-CLIP): image-caption pairs, symmetric InfoNCE, zero-shot evaluation.

Data: the built-in single-object shapes set (default; every image has five paraphrased captions, one drawn per step;
zero-shot classes are the 18 "<colour> <shape>" names, prompted as "a photo of a red circle"), a Hub or local
dataset with an image and a caption column, or webdataset tar shards (LAION format: `{key}.jpg` + `{key}.txt`).
A dataset whose eval split has a ClassLabel `label_column` is also scored zero-shot with `zero_shot_template`.
"""

import logging

from transformers import AutoTokenizer

from ..processing.processing_dtp_clip import DTPCLIPProcessor
from ..processing.processing_dtp_vit import build_image_processor
from .data.captioning import with_example_ids
from .data.collators import ContrastiveCollator, EpochCallback
from .data.image_text import load_image_text_splits
from .data.tokenizers import char_tokenizer
from .evaluation.zero_shot import zero_shot_accuracy
from .trainer import LeanTrainer

logger = logging.getLogger("leanvision.contrastive")


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
