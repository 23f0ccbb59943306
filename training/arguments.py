"""The arguments of a training run: the dataclasses behind `train.py`'s flags, the one recipe loader, and the record
of a run that model cards read.

A recipe (YAML or JSON) holds defaults for the flags below and for any `transformers.TrainingArguments` field;
flags on the command line override it. Recipe values stay Python objects: `config_overrides` (a mapping of config
fields) and `freezing` (a list of phases) reach the task as they are in the YAML. On the command line these two are
JSON text, parsed once, here.
"""

import json
import os
from dataclasses import dataclass, field, fields

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .families import FAMILIES, get_family
from .files import write_json_atomically
from .lora import DEFAULT_TARGET_MODULES

RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


def from_json(value, kind: type, name: str, what: str):
    """A recipe value as it is, or the command line's JSON text for it; either way checked to be a `kind`."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} must be {what}, got {value!r}: {err}") from None
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


@dataclass
class LoraArguments:
    lora: bool = field(
        default=False,
        metadata={"help": "train a LoRA adapter (peft) on top of `model_name_or_path`; the base weights stay fixed"},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling: updates are scaled by alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list | str | None = field(
        default=None,
        metadata={"help": "comma-separated module names to adapt (a list in a recipe); default: the family's "
                  f"attention projections {json.dumps({k: list(v) for k, v in DEFAULT_TARGET_MODULES.items()})}"},
    )


@dataclass
class ModelArguments(LoraArguments):
    family: str = field(default="dtp_vit", metadata={"help": f"model family: one of {sorted(FAMILIES)}"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from this saved model (folder or Hub id) instead of a fresh one"}
    )
    config_overrides: dict | str | None = field(
        default=None,
        metadata={"help": "config fields to set: a mapping in a recipe, a JSON object on the command line, e.g. "
                  "'{\"compression_rate\": 0.25}'"},
    )
    init_from_blip: str | None = field(
        default=None,
        metadata={"help": "captioning: start the text decoder and tokenizer from this BLIP captioning checkpoint"},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "captioning: tokenizer for a fresh model; default: a word-level vocabulary of the captions"},
    )
    vae_name_or_path: str | None = field(
        default=None, metadata={"help": "latent captioners: load this diffusers AutoencoderKL into the model"}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "captioning: processor image size; default: the vision tower's, or the VAE's sample_size"},
    )
    init_from_clip: str | None = field(
        default=None, metadata={"help": "dtp_clip: start both towers from this transformers CLIP checkpoint"}
    )
    vision_backbone: str | None = field(
        default=None, metadata={"help": "qvision_multimodel: pretrained CLIP checkpoint (with text_backbone)"}
    )
    text_backbone: str | None = field(
        default=None, metadata={"help": "qvision_multimodel: pretrained GPT-Neo checkpoint (with vision_backbone)"}
    )
    freezing: list | str | None = field(
        default=None,
        metadata={"help": "progressive freezing: a list of phases (see training/callbacks.py) in a recipe, a JSON list "
                  "on the command line"},
    )

    def __post_init__(self):
        self.config_overrides = from_json(self.config_overrides, dict, "config_overrides", "a JSON object") or {}
        self.freezing = from_json(self.freezing, list, "freezing", "a list of phases (YAML or JSON)") or None


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset, save_to_disk folder or local data folder; default: the family's built-in set"},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "dataset configuration name"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    eval_split: str | None = field(
        default="auto",
        metadata={"help": "split to evaluate on; 'auto' = 'test' or 'validation' if present, else carved from train"},
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "fraction of train held out when no eval split"})
    image_column: str = field(default="image", metadata={"help": "column holding the images"})
    label_column: str = field(default="label", metadata={"help": "column holding the class labels"})
    caption_column: str = field(
        default="caption", metadata={"help": "captioning: column of the caption (a string or a list of strings)"}
    )
    references_column: str | None = field(
        default="captions",
        metadata={"help": "captioning: column of the reference captions for evaluation, if present; else captions"},
    )
    max_caption_length: int = field(default=64, metadata={"help": "captioning: token limit of training captions"})
    generation_max_new_tokens: int = field(default=40, metadata={"help": "captioning: generated tokens at evaluation"})
    generation_num_beams: int = field(default=1, metadata={"help": "captioning: beams at evaluation (1 = greedy)"})
    caption_metrics: str = field(
        default="bleu,rouge_l,cider",
        metadata={"help": "captioning: comma-separated metrics (bleu, meteor, rouge_l, cider, spice) at evaluation"},
    )
    zero_shot_template: str = field(
        default="a photo of a {}", metadata={"help": "contrastive: zero-shot prompt, {} marks the class name"}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "truncate the training set (built-in shapes: images drawn, default 2000)"}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "truncate the evaluation set (built-in shapes: images drawn, default 200)"}
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)


def load_recipe(path: str) -> dict:
    """A recipe file (YAML or JSON) as a mapping of argument names to values."""
    if not os.path.isfile(path):
        raise ValueError(f"recipe file {path!r} does not exist")
    with open(path) as f:
        recipe = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path!r} must be a mapping of argument names to values")
    return recipe


def recipe_name(argv: list[str]) -> str | None:
    """The file name of the recipe that starts `argv`, if one does."""
    return os.path.basename(argv[0]) if argv and argv[0].endswith(RECIPE_SUFFIXES) else None


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """`RECIPE [--flag value ...]` (or flags only) -> the three argument dataclasses."""
    recipe = {}
    if recipe_name(argv):
        recipe, argv = load_recipe(argv[0]), argv[1:]
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"unknown recipe keys: {unknown}")
    get_family(recipe.get("family", "dtp_vit"))
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    # Non-string defaults reach the dataclasses unconverted: a recipe's mappings and lists stay Python objects.
    parser.set_defaults(**recipe)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    get_family(model_args.family)
    return model_args, data_args, training_args


BUILT_IN_DATA = {
    "image_classification": "scikit-learn's digits (built in)",
    "captioning": "the shapes captions (built in, leanvision.training.data.shapes)",
    "contrastive": "the single-object shapes set (built in, leanvision.training.data.shapes)",
}
TRAINING_RECORD = "leanvision_training.json"


def write_training_record(output_dir: str, family, data_args, training_args, recipe: str | None) -> None:
    """`leanvision_training.json`: what the model card says about training. Local paths are cut to their last part."""

    def public(name: str | None) -> str | None:
        return f"{os.path.basename(os.path.normpath(name))} (a local folder)" if name and os.path.exists(name) else name

    record = {
        "family": family.name,
        "recipe": recipe,
        "training data": public(data_args.dataset_name) or BUILT_IN_DATA[family.task],
        "learning rate": training_args.learning_rate,
        "seed": training_args.seed,
        "world size": training_args.world_size,
    }
    write_json_atomically(os.path.join(output_dir, TRAINING_RECORD), record)
