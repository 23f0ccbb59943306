"""The captioning task of `train.py`, shared by every captioning family, and generation-based caption scoring.

A family serves this task with a `Family` entry that gives `build_captioner` (model + processor from the model
arguments) and, for models that read VAE latents, `latent_inputs=True`. Everything else is common: the data
(`data/captioning.py`), the collator, and `CaptionTrainer`, which evaluates by generating captions and scoring them
with the caption metric module (BLEU-1..4, ROUGE-L, CIDEr, + METEOR on request) against every reference of an image.
"""

import logging

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from .data.captioning import (
    captions_of,
    check_caption_columns,
    encode_images_to_latents,
    is_latent_dataset,
    latent_cache_fingerprint,
    load_caption_splits,
    references_of,
    with_example_ids,
)
from .data.collators import CaptionCollator, EpochCallback
from .evaluation.captions import FAST_METRICS, flat_scores, parse_metric_names, score_captions
from .inference import decode_captions, generation_inputs
from .trainer import LeanTrainer

logger = logging.getLogger("leanvision.captioning")


class CaptionTrainer(LeanTrainer):
    """Evaluates by generation: each eval batch gives the teacher-forced loss and `generate()`d captions, which are
    gathered across ranks (`gather_for_metrics`, via the evaluation loop) with the batch's `example_id`s, decoded
    and scored against `references[example_id]` on the main process; the scores are broadcast to every rank and
    logged as `eval_<metric>`.

    Args:
        references: the reference captions of each eval example, indexed by `example_id`.
        generation_kwargs: passed to `generate()` (e.g. `max_new_tokens`, `num_beams`, `do_sample=False`).
        caption_metrics: metric names of the caption metric module to compute.

    After each evaluation, `last_predictions` holds the generated captions in eval-dataset order.
    """

    def __init__(self, *args, references, generation_kwargs=None, caption_metrics=FAST_METRICS, **kwargs):
        super().__init__(*args, **kwargs)
        self.references = references
        self.generation_kwargs = dict(generation_kwargs or {})
        self.caption_metrics = parse_metric_names(caption_metrics)
        self.compute_metrics = self._score_generated
        self.last_predictions: list[str] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {key: value for key, value in inputs.items() if key != "example_id"}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs).detach().mean()
            if prediction_loss_only:
                return loss, None, None
            generator = self.accelerator.unwrap_model(model)
            generated = generator.generate(**generation_inputs(inputs), **self.generation_kwargs)
        return loss, generated, inputs["example_id"]

    def _score_generated(self, prediction) -> dict[str, float]:
        example_ids = np.asarray(prediction.label_ids).reshape(-1)
        captions = decode_captions(self.processing_class, prediction.predictions)
        scores = [None]
        if self.accelerator.is_main_process:
            result = score_captions(captions, [self.references[i] for i in example_ids], self.caption_metrics)
            scores = [flat_scores(result)]
            for example_id, caption in list(zip(example_ids, captions))[:3]:
                logger.info("caption %d: %r (reference %r)", example_id, caption, self.references[example_id][0])
        if self.accelerator.num_processes > 1:
            broadcast_object_list(scores)
        self.last_predictions = [caption for _, caption in sorted(zip(example_ids.tolist(), captions))]
        return scores[0]


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


def setup_captioning(family, model_args, data_args, training_args, overrides: dict) -> dict:
    """Model, processor, datasets, collator and `CaptionTrainer` arguments for a captioning family."""
    if family.build_captioner is None:
        raise ValueError(f"family {family.name!r} has no captioning builder")
    caption_col, image_col = data_args.caption_column, data_args.image_column
    train, evaluation = load_caption_splits(data_args, training_args.seed)
    for split in (train, evaluation):
        check_caption_columns(split, caption_col, image_col)
    train_captions = [c for value in train[caption_col] for c in captions_of(value)]
    model, processor = family.build_captioner(model_args, overrides, train_captions)

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
    return dict(
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
