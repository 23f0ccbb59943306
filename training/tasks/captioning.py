"""The captioning task of `train.py`, shared by every captioning family.

A family serves this task with a `Family` entry whose `build(model_args, config_overrides, train_captions)` gives
model + processor and, for models that read VAE latents, `latent_inputs=True`. Everything else is common: the data
(`data/captioning.py`), the collator, and `CaptionTrainer`, which evaluates by generating captions and scoring them
with the caption metric module (BLEU-1..4, ROUGE-L, CIDEr, + METEOR on request) against every reference of an image.
"""

import torch

from ..data.captioning import (
    captions_of,
    check_caption_columns,
    encode_images_to_latents,
    is_latent_dataset,
    latent_cache_fingerprint,
    load_caption_splits,
    references_of,
    with_example_ids,
)
from ..data.collators import CaptionCollator, EpochCallback
from ..trainer import CaptionTrainer, TaskSetup


def latent_inputs(model, processor, dataset, image_column: str, device):
    """`dataset` in the latent schema, encoding images once with the model's frozen VAE (a no-op for latents)."""
    if is_latent_dataset(dataset):
        return dataset
    base = model.base_model
    if getattr(base, "vae", None) is None:
        raise ValueError(
            "image data need the model's VAE to make latents: set `vae_config` in config_overrides or "
            "`vae_name_or_path`, or train on a dataset of latents (vae_latent, vae_latent_shape, caption)"
        )
    base.vae.to(device)

    def encode(images):
        pixel_values = processor(images=images)["pixel_values"].to(device)
        with torch.no_grad():
            return base.encode_pixel_values(pixel_values)

    size = processor.image_processor.size
    fingerprint = latent_cache_fingerprint(dataset, base.vae, size.get("height", size.get("shortest_edge")))
    return encode_images_to_latents(dataset, encode, image_column, fingerprint)


def setup_captioning(family, model_args, data_args, training_args) -> TaskSetup:
    """Model, processor, datasets, collator and `CaptionTrainer` arguments for a captioning family."""
    caption_col, image_col = data_args.caption_column, data_args.image_column
    train, evaluation = load_caption_splits(data_args, training_args.seed)
    for split in (train, evaluation):
        check_caption_columns(split, caption_col, image_col)
    train_captions = [c for value in train[caption_col] for c in captions_of(value)]
    model, processor = family.build(model_args, model_args.config_overrides, train_captions)

    if family.latent_inputs:
        with training_args.main_process_first(desc="VAE latents"):
            train = latent_inputs(model, processor, train, image_col, training_args.device)
            evaluation = latent_inputs(model, processor, evaluation, image_col, training_args.device)
    elif is_latent_dataset(train):
        raise ValueError(f"family {family.name!r} reads images, but the dataset holds VAE latents")

    references = references_of(evaluation, caption_col, data_args.references_column)
    # Saved with the model, so the pipeline and `leanvision caption` generate whole captions by default.
    model.generation_config.max_new_tokens = data_args.generation_max_new_tokens
    collator = CaptionCollator(processor, caption_col, image_col, data_args.max_caption_length, seed=training_args.seed)
    return TaskSetup(
        model=model,
        processor=processor,
        train_dataset=with_example_ids(train),
        eval_dataset=with_example_ids(evaluation),
        data_collator=collator,
        callbacks=[EpochCallback(collator)],
        trainer_class=CaptionTrainer,
        trainer_kwargs=dict(
            references=references,
            generation_kwargs=dict(
                max_new_tokens=data_args.generation_max_new_tokens,
                num_beams=data_args.generation_num_beams,
                do_sample=False,
            ),
            caption_metrics=data_args.caption_metrics,
        ),
    )
