"""The contrastive task of `train.py` (DTP-CLIP): image-caption pairs, symmetric InfoNCE, zero-shot evaluation.

The data (`data/image_text.py`): the built-in single-object shapes set, a Hub or local image-caption dataset, or
webdataset shards; one caption of each image is drawn per epoch. An eval split with class labels is also scored
zero-shot by `ContrastiveTrainer`.
"""

import logging

from ..data.captioning import with_example_ids
from ..data.collators import ContrastiveCollator, EpochCallback
from ..data.image_text import load_image_text_splits
from ..trainer import ContrastiveTrainer, TaskSetup

logger = logging.getLogger("leanvision.contrastive")


def setup_contrastive(family, model_args, data_args, training_args) -> TaskSetup:
    """Model, processor, datasets, collator and `ContrastiveTrainer` arguments for DTP-CLIP."""
    train, evaluation, caption_col, image_col, zero_shot = load_image_text_splits(data_args, training_args.seed)
    model, processor = family.build(model_args, model_args.config_overrides)
    max_length = min(processor.tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
    if zero_shot is not None:
        logger.info("zero-shot evaluation on %d images, %d prompts, e.g. %r", len(evaluation), len(zero_shot[1]),
                    zero_shot[1][0])
    collator = ContrastiveCollator(processor, caption_col, image_col, max_length, seed=training_args.seed)
    return TaskSetup(
        model=model,
        processor=processor,
        train_dataset=with_example_ids(train),
        eval_dataset=evaluation,
        data_collator=collator,
        callbacks=[EpochCallback(collator)],
        trainer_class=ContrastiveTrainer,
        trainer_kwargs=dict(zero_shot=zero_shot, image_column=image_col),
    )
