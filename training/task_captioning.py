"""The captioning task of `train.py`, shared by every captioning family, and generation-based caption scoring.

A family serves this task with a `Family` entry that gives `build_captioner` (model + processor from the model
arguments) and, for models that read VAE latents, `latent_inputs=True`. Everything else is common: the data
(`captioning_data.py`), the collator, and `CaptionTrainer`, which evaluates by generating captions and scoring them
with the caption metric module (BLEU-1..4, ROUGE-L, CIDEr, + METEOR on request) against every reference of an image.
"""

import logging
import os

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from .captioning_data import (
    CaptionCollator,
    EpochCallback,
    captions_of,
    check_caption_columns,
    encode_images_to_latents,
    is_latent_dataset,
    latent_cache_fingerprint,
    load_caption_splits,
    references_of,
    with_example_ids,
)
from .families import family_of_model_dir, load_saved
from .trainer import LeanTrainer

logger = logging.getLogger("leanvision.captioning")

METRIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "caption_metrics")
FAST_METRICS = ("bleu", "rouge_l", "cider")
ALL_METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")
TEXT_KEYS = ("input_ids", "attention_mask", "labels", "example_id")

_METRIC = None


def caption_metric():
    """The `evaluate` caption metric module, loaded by path (offline) once per process."""
    global _METRIC
    if _METRIC is None:
        import evaluate

        _METRIC = evaluate.load(METRIC_DIR, keep_in_memory=True)
    return _METRIC


def parse_metric_names(names) -> tuple[str, ...]:
    """Metric names from a comma-separated string or a sequence, checked against the module's metrics."""
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown or not names:
        raise ValueError(f"caption metrics must be a non-empty subset of {list(ALL_METRICS)}, got {names!r}")
    return tuple(names)


def score_captions(predictions: list[str], references: list[list[str]], metrics=FAST_METRICS) -> dict:
    """COCO caption scores of `predictions` against several `references` each: floats per metric (None for a
    skipped one) and `skipped` (metric -> reason)."""
    return caption_metric().compute(predictions=predictions, references=references, metrics=list(metrics))


def generation_inputs(batch: dict) -> dict:
    """The vision inputs of a batch (`pixel_values`, or `latents` + `latent_mask`): everything but the text."""
    return {key: value for key, value in batch.items() if key not in TEXT_KEYS}


def decode_captions(processor, token_ids) -> list[str]:
    """Generated ids (padding may be -100) to stripped captions without special tokens."""
    tokenizer = processor.tokenizer
    ids = np.asarray(token_ids.cpu() if isinstance(token_ids, torch.Tensor) else token_ids)
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]


def flat_scores(result: dict) -> dict[str, float]:
    """The numeric entries of a `score_captions` result (skipped metrics and the `skipped` dict left out)."""
    return {key: float(value) for key, value in result.items() if isinstance(value, (int, float))}


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


# --- Inference on saved models: `leanvision caption`, `leanvision evaluate`, the ablation ---------------------------

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


def caption_dataset(model, processor, dataset, generation_kwargs: dict, image_column: str = "image",
                    batch_size: int = 32) -> list[str]:
    """Captions of every row of an image or latent caption dataset, in order."""
    collator = CaptionCollator(processor, caption_column="", image_column=image_column, max_length=1)
    captions = []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        with torch.no_grad():
            generated = model.generate(**collator.vision_inputs(rows), **generation_kwargs)
        captions.extend(decode_captions(processor, generated))
    return captions


def load_eval_split(dataset_name: str, split: str | None = None, max_samples: int | None = None,
                    config_name: str | None = None):
    """An evaluation split: "shapes" (the built-in test split, `max_samples` images, default 200), or a Hub / local
    dataset's `split` (default: test, else validation, else train), truncated to `max_samples`."""
    from .data import load_any_dataset
    from .shapes import shapes_splits

    if dataset_name == "shapes":
        if split not in (None, "test"):
            raise ValueError(f"the built-in shapes set is evaluated on its test split, not {split!r}")
        return shapes_splits(train=0, test=max_samples or 200, seed=0)["test"], "test"
    data = load_any_dataset(dataset_name, config_name)
    if split is None:
        split = next((name for name in ("test", "validation", "train") if name in data), None)
    if split not in data:
        raise ValueError(f"dataset {dataset_name!r} has no split {split!r}; splits: {sorted(data)}")
    evaluation = data[split]
    if max_samples:
        evaluation = evaluation.select(range(min(max_samples, len(evaluation))))
    return evaluation, split


def evaluate_captioner(model_dir: str, dataset_name: str, split: str | None = None, max_samples: int | None = None,
                       metrics=("bleu", "meteor", "rouge_l", "cider", "spice"), generation_kwargs: dict | None = None,
                       caption_column: str = "caption", references_column: str | None = "captions",
                       image_column: str = "image", batch_size: int = 32, config_name: str | None = None) -> dict:
    """Generation-based caption scores of a saved model on a dataset split: a JSON-ready report."""
    metrics = parse_metric_names(metrics)
    generation_kwargs = generation_kwargs or decoding_kwargs()
    family, model, processor = load_captioner(model_dir)
    evaluation, split = load_eval_split(dataset_name, split, max_samples, config_name)
    check_caption_columns(evaluation, caption_column, image_column)
    if is_latent_dataset(evaluation) and not family.latent_inputs:
        raise ValueError(f"a {family.name} model reads images, but {dataset_name!r} holds VAE latents")
    references = references_of(evaluation, caption_column, references_column)
    predictions = caption_dataset(model, processor, evaluation, generation_kwargs, image_column, batch_size)
    result = score_captions(predictions, references, metrics)
    return {
        "model": model_dir,
        "family": family.name,
        "dataset": dataset_name,
        "split": split,
        "num_samples": len(predictions),
        "generation": generation_kwargs,
        "scores": {key: value for key, value in result.items() if key != "skipped"},
        "skipped": result["skipped"],
        "examples": [
            {"prediction": p, "references": r} for p, r in list(zip(predictions, references))[:5]
        ],
    }
