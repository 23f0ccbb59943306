"""Generation-based caption scores: the caption metric module (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE, against
every reference of an image) and `leanvision evaluate` for captioners."""

import os

from ..data.captioning import check_caption_columns, is_latent_dataset, load_eval_split, references_of
from ..inference import caption_dataset, decoding_kwargs, load_captioner

METRIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "caption_metrics")
FAST_METRICS = ("bleu", "rouge_l", "cider")
ALL_METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")

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


def flat_scores(result: dict) -> dict[str, float]:
    """The numeric entries of a `score_captions` result (skipped metrics and the `skipped` dict left out)."""
    return {key: float(value) for key, value in result.items() if isinstance(value, (int, float))}


def evaluate_captioner(model_dir: str, dataset_name: str, split: str | None = None, max_samples: int | None = None,
                       metrics=ALL_METRICS, generation_kwargs: dict | None = None,
                       caption_column: str = "caption", references_column: str | None = "captions",
                       image_column: str = "image", batch_size: int = 32, config_name: str | None = None,
                       progress: bool = False) -> dict:
    """Generation-based caption scores of a saved model on a dataset split: a JSON-ready report; `progress` shows a
    bar over the images on a terminal."""
    metrics = parse_metric_names(metrics)
    generation_kwargs = generation_kwargs or decoding_kwargs()
    family, model, processor = load_captioner(model_dir)
    evaluation, split = load_eval_split(dataset_name, split, max_samples, config_name)
    check_caption_columns(evaluation, caption_column, image_column)
    if is_latent_dataset(evaluation) and not family.latent_inputs:
        raise ValueError(f"a {family.name} model reads images, but {dataset_name!r} holds VAE latents")
    references = references_of(evaluation, caption_column, references_column)
    predictions = caption_dataset(model, processor, evaluation, generation_kwargs, image_column, batch_size,
                                  progress)
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
