"""Model cards: one Jinja template per family (`<family>.jinja`) plus shared sections (`partials.jinja`), rendered with
`huggingface_hub.ModelCard.from_template`; the metadata (`ModelCardData`) drives the Hub's widget and `model-index`."""

import json
import os
import re
import tempfile

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..training.arguments import TRAINING_RECORD, recorded_seed

TEMPLATE_DIR = os.path.dirname(os.path.abspath(__file__))
EXAMPLE_IMAGE = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/cats.png"
# An image of the model's own built-in training data (digits, shapes), shipped in the bundle for its widget.
EXAMPLE_FILE = "example.png"
DEFAULT_CANDIDATE_LABELS = ("two cats", "a dog", "a car")
# Parameter count under which a card says it describes a small demonstration model.
SMALL_MODEL_PARAMETERS = 10_000_000
# Trainer bookkeeping in eval_results.json that is not a measurement of the model.
_NOT_METRICS = {"epoch", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time"}
_METRIC_LABELS = {
    "accuracy": "Accuracy",
    "loss": "Loss",
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr",
    "spice": "SPICE",
    "zero_shot_top1": "Zero-shot top-1 accuracy",
    "zero_shot_top5": "Zero-shot top-5 accuracy",
    "boundary_ratio": "Boundary ratio",
    "vqa_accuracy": "VQA accuracy (exact match)",
    "prior_accuracy": "Question-type prior baseline accuracy",
}
# (label, dotted config attribute) rows of each family's architecture table.
_ARCHITECTURE = {
    "dtp_vit": [
        ("image size", "image_size"), ("patch size", "patch_size"), ("width", "hidden_size"),
        ("attention heads", "num_attention_heads"), ("dense pre-layers", "num_pre_layers"),
        ("shortened layers", "num_shortened_layers"), ("compression rate", "compression_rate"),
        ("inference boundaries", "boundary_inference"),
    ],
    "dtp_clip": [
        ("image size", "vision_config.image_size"), ("patch size", "vision_config.patch_size"),
        ("image width", "vision_config.hidden_size"), ("dense pre-layers", "vision_config.num_pre_layers"),
        ("shortened layers", "vision_config.num_shortened_layers"),
        ("compression rate", "vision_config.compression_rate"),
        ("inference boundaries", "vision_config.boundary_inference"), ("text width", "text_config.hidden_size"),
        ("text layers", "text_config.num_hidden_layers"), ("projection dim", "projection_dim"),
    ],
    "gated_sparse_blip": [
        ("latent channels", "latent_channels"), ("latent patch size", "latent_patch_size"),
        ("max latent size", "max_latent_size"), ("encoder width", "vision_hidden_size"),
        ("encoder layers", "vision_num_hidden_layers"), ("decoder width", "text_config.hidden_size"),
        ("decoder layers", "text_config.num_hidden_layers"), ("token gating", "use_token_gating"),
        ("attention sparsity", "attention_sparsity"), ("sparse self-attention", "sparse_self_attention"),
        ("sparse cross-attention", "sparse_cross_attention"),
    ],
    "dtp_llava": [
        ("image size", "vision_config.image_size"), ("patch size", "vision_config.patch_size"),
        ("vision width", "vision_config.hidden_size"), ("compression rate", "vision_config.compression_rate"),
        ("inference boundaries", "vision_config.boundary_inference"), ("feature layer", "vision_feature_layer"),
        ("feature selection", "vision_feature_select_strategy"), ("projector layers", "projector_depth"),
        ("language model", "text_config.model_type"), ("language model width", "text_config.hidden_size"),
        ("language model layers", "text_config.num_hidden_layers"),
    ],
    "qvision_multimodel": [
        ("image size", "vision_config.image_size"), ("patch size", "vision_config.patch_size"),
        ("vision width", "vision_config.hidden_size"), ("vision layers", "vision_config.num_hidden_layers"),
        ("query tokens", "num_query_tokens"), ("global token", "use_global_token"),
        ("Q-Former width", "qformer_hidden_size"), ("Q-Former layers", "qformer_num_layers"),
        ("cross-attention every n blocks", "cross_attention_every_n"), ("decoder width", "text_config.hidden_size"),
        ("decoder blocks", "text_config.num_layers"),
    ],
}
_TAGS = {
    "dtp_vit": ["vision-transformer", "dynamic-token-pooling"],
    "dtp_clip": ["clip", "dynamic-token-pooling"],
    "gated_sparse_blip": ["image-captioning", "sparse-attention"],
    "qvision_multimodel": ["image-captioning", "q-former"],
    "dtp_llava": ["llava", "visual-question-answering", "dynamic-token-pooling"],
}
_TOKEN = re.compile(r"hf_[A-Za-z0-9]{10,}")

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR), trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
)


def hub_ids(names, what: str) -> list[str]:
    """`names` (one or a list) as Hub repo ids; a local path is refused, since a card must not name one."""
    names = [names] if isinstance(names, str) else list(names or [])
    for name in names:
        try:
            validate_repo_id(name)
        except HFValidationError:
            raise ValueError(f"{what} {name!r} is not a Hub repo id (a model card cannot point to a local path)")
    return names


def _public_dataset_name(name: str | None) -> str | None:
    """A dataset name fit for a card: a Hub id or built-in name as is, None for a local folder or nothing."""
    if not name or os.path.isabs(name) or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _config_value(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is None:
            return None
    return value


def _metric_row(name: str, value: float, dataset: str | None, split: str | None, data: str) -> dict:
    return {
        "name": name,
        "label": _METRIC_LABELS.get(name, name),
        "value": round(float(value), 4),
        "dataset": dataset,
        "split": split,
        "data": data,
    }


def evaluation_rows(metrics: dict | None, evaluation: dict | None = None, datasets=()) -> tuple[list, list]:
    """The evaluation table: rows from train.py's eval_results.json (`metrics`, flat `eval_*` keys, measured on the
    training run's held-out split of `datasets[0]`) and from a `leanvision evaluate --out` report (`evaluation`,
    with `scores`, `skipped`, `dataset`, `split`, `num_samples`). Returns (rows, skipped) where skipped lists
    (metric, reason) pairs."""
    rows, skipped = [], []
    train_dataset = datasets[0] if datasets else None
    for key, value in (metrics or {}).items():
        name = key.removeprefix("eval_")
        if name in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        data = ", ".join(filter(None, (train_dataset, "evaluation split of the training run")))
        rows.append(_metric_row(name, value, train_dataset, None, data))
    if evaluation:
        dataset = _public_dataset_name(evaluation.get("dataset"))
        split = evaluation.get("split")
        count = evaluation.get("num_samples")
        parts = (dataset or "a local dataset", split, f"{count} examples" if count else None)
        data = ", ".join(str(part) for part in parts if part)
        for name, value in evaluation.get("scores", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append(_metric_row(name, value, dataset, split, data))
        skipped = sorted((evaluation.get("skipped") or {}).items())
    return rows, skipped


def recipe_from_model_dir(model_dir: str) -> list[tuple[str, str]]:
    """Training facts a train.py run leaves in its output folder: data, recipe, learning rate, seed and world size
    (leanvision_training.json), epochs, steps and batch size (trainer_state.json)."""
    facts = []
    path = os.path.join(model_dir, TRAINING_RECORD)
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
        facts += [(name, record.get(name)) for name in ("training data", "recipe", "learning rate", "seed", "world size")]
    path = os.path.join(model_dir, "trainer_state.json")
    if os.path.isfile(path):
        with open(path) as f:
            state = json.load(f)
        facts += [
            ("epochs", state.get("num_train_epochs")),
            ("optimiser steps", state.get("global_step")),
            ("batch size per device", state.get("train_batch_size")),
        ]
    return [(name, value) for name, value in facts if value is not None]


def example_image(model_dir: str):
    """(PIL image) A held-out image of the built-in data the model in `model_dir` was trained on (scikit-learn's
    digits, or the shapes sets, per its training record), for the widget and the snippets of its card; None for other
    data (the card then shows a photo from the Hub)."""
    path = os.path.join(model_dir, TRAINING_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f).get("training data") or ""
    if "built in" not in data:
        return None
    if "digits" in data:
        from ..training.data.digits import digits_dataset

        return digits_dataset(seed=recorded_seed(model_dir))["test"][0]["image"].convert("RGB")
    if "shapes" in data:
        from ..training.data.shapes import make_shapes_dataset

        max_objects = 1 if "single-object" in data else 3
        return make_shapes_dataset(1, seed=0, max_objects=max_objects, split="test")[0]["image"].convert("RGB")
    return None


def check_public(text: str) -> None:
    """Refuses text that names a local folder of the publishing machine (home, working or temp directory) or a token."""
    for folder in {os.path.expanduser("~"), os.getcwd(), tempfile.gettempdir()}:
        if len(folder) > 1 and folder in text:
            raise ValueError(f"the model card names the local folder {folder!r}")
    if _TOKEN.search(text):
        raise ValueError("the model card holds something that looks like a Hugging Face token")


def _decoding_note(evaluation: dict | None) -> str:
    generation = (evaluation or {}).get("generation")
    return f"Captions were generated with `{json.dumps(generation, sort_keys=True)}`." if generation else ""


def _auto_class(family) -> str:
    """The task-specific Auto class of the family's bundle (AutoModelFor...), else AutoModel."""
    specific = [name for name in family.auto_map if name.startswith("AutoModelFor")]
    return specific[0] if specific else "AutoModel"


def render_card(family, config, metrics: dict | None, repo_id: str | None = None, base_model=None, datasets=None,
                recipe=None, evaluation: dict | None = None, num_parameters: int | None = None,
                license: str = "apache-2.0", candidate_labels=DEFAULT_CANDIDATE_LABELS, example: str | None = None,
                requirements=()) -> str:
    """The README.md of an exported `family` model.

    `metrics`: train.py's eval_results.json; `evaluation`: a `leanvision evaluate --out` report; `base_model` and
    `datasets`: Hub ids (one or a list) of the checkpoints it started from and its training data; `recipe`: (name,
    value) training facts (e.g. `recipe_from_model_dir`); `repo_id`: where it will live (used in the snippets);
    `example`: the file name of an example image shipped in the repository (default: a photo on the Hub), used by the
    widget and the snippets; `requirements`: the packages the code needs beyond torch and transformers.
    Metrics measured on a named dataset also go into the `model-index` metadata.
    """
    if repo_id is not None:
        validate_repo_id(repo_id)
    base_models = hub_ids(base_model, "base model")
    datasets = hub_ids(datasets, "dataset")
    rows, skipped = evaluation_rows(metrics, evaluation, datasets)
    model_name = repo_id.split("/")[-1] if repo_id else f"leanvision-{family.name}"
    eval_results = [
        EvalResult(
            task_type=family.pipeline_tag, dataset_type=row["dataset"], dataset_name=row["dataset"],
            dataset_split=row["split"], metric_type=row["name"], metric_name=row["label"], metric_value=row["value"],
        )
        for row in rows
        if row["dataset"]
    ]
    repo = repo_id or "path/to/this/folder"
    if example is None:
        example_url, widget = EXAMPLE_IMAGE, {"src": EXAMPLE_IMAGE, "example_title": "Cats"}
    else:
        example_url = f"https://huggingface.co/{repo_id}/resolve/main/{example}" if repo_id else f"{repo}/{example}"
        widget = {"src": example_url if repo_id else example, "example_title": "An image like the training data"}
    if family.pipeline_tag == "zero-shot-image-classification":
        widget["candidate_labels"] = ", ".join(candidate_labels)
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=family.pipeline_tag,
        license=license,
        tags=["custom_code", "leanvision", family.name, *_TAGS.get(family.name, [])],
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        datasets=datasets or None,
        # model-index needs a model name; without results the name would be a stray metadata key.
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
        widget=[widget],
    )
    architecture = [(label, _config_value(config, attr)) for label, attr in _ARCHITECTURE.get(family.name, [])]
    sparsity = getattr(config, "attention_sparsity", None)
    card = ModelCard.from_template(
        data,
        template_path=os.path.join(TEMPLATE_DIR, f"{family.name}.jinja"),
        partials=_ENV.get_template("partials.jinja").module,
        title=model_name,
        config=config,
        repo=repo,
        auto_class=_auto_class(family),
        processor_class="AutoProcessor" if family.processor_auto_map else "AutoImageProcessor",
        example_url=example_url,
        requirements=list(requirements),
        candidate_labels=list(candidate_labels),
        architecture=[(label, value) for label, value in architecture if value is not None],
        num_labels=len(getattr(config, "id2label", None) or {}),
        keep_percent=None if sparsity is None else round(100 * (1 - sparsity)),
        base_models=base_models,
        recipe=list(recipe or []),
        num_parameters=num_parameters,
        small_model=num_parameters is not None and num_parameters < SMALL_MODEL_PARAMETERS,
        evaluation_rows=rows,
        evaluation_note=_decoding_note(evaluation),
        skipped=skipped,
        datasets=datasets,
    )
    # Template blocks leave runs of blank lines; Markdown needs at most one.
    text = re.sub(r"\n{3,}", "\n\n", str(card)).rstrip("\n") + "\n"
    check_public(text)
    return text


def render_adapter_card(family, adapter_config: dict, repo_id: str, base: str, metrics: dict | None = None,
                        evaluation: dict | None = None, datasets=None, license: str = "apache-2.0") -> str:
    """The README.md of a LoRA adapter repo (`adapter.jinja`): `adapter_config` is peft's adapter_config.json, `base`
    the Hub id of the `family` model it adapts; `metrics`, `evaluation` and `datasets` as for `render_card`."""
    datasets = hub_ids(datasets, "dataset")
    rows, _ = evaluation_rows(metrics, evaluation, datasets)
    data = ModelCardData(
        library_name="peft", base_model=base, pipeline_tag=family.pipeline_tag, license=license,
        datasets=datasets or None, tags=["lora", "peft", "leanvision", family.name],
    )
    card = ModelCard.from_template(
        data, template_path=os.path.join(TEMPLATE_DIR, "adapter.jinja"), title=repo_id.split("/")[-1], base=base,
        repo=repo_id, family=family.name, rank=adapter_config["r"], alpha=adapter_config["lora_alpha"],
        targets=", ".join(f"`{name}`" for name in sorted(adapter_config["target_modules"])),
        auto_class=_auto_class(family), rows=rows,
    )
    text = str(card)
    check_public(text)
    return text

