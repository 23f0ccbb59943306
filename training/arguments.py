"""The arguments of a training run: the dataclasses behind `train.py`'s flags, the one recipe loader, and the record
of a run that model cards read.

A recipe (YAML or JSON) holds defaults for the flags below and for any `transformers.TrainingArguments` field;
flags on the command line override it. Recipe values stay Python objects: `config_overrides` (a mapping of config
fields) and `freezing` (a list of phases) reach the task as they are in the YAML. On the command line these two are
JSON text, parsed once, here.
"""

import difflib
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass

import yaml
from transformers import CONFIG_MAPPING, HfArgumentParser, TrainingArguments

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
        default=None,
        metadata={"help": "qvision_multimodel: pretrained CLIP checkpoint (with text_backbone); dtp_llava: DTP-CLIP / "
                          "DTP-ViT folder or CLIP checkpoint (alone: a fresh LM from text_config)"},
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


@dataclass
class LeanvisionTrainingArguments(TrainingArguments):
    """transformers' `TrainingArguments` plus the guard of `output_dir`."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "train into `output_dir` even if it exists and is not empty (its files may be replaced)"},
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, LeanvisionTrainingArguments)


def load_recipe(path: str) -> dict:
    """A recipe file (YAML or JSON) as a mapping of argument names to values."""
    if not os.path.isfile(path):
        raise ValueError(f"recipe file {path!r} does not exist")
    with open(path) as f:
        try:
            recipe = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"recipe {path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"recipe {path}: invalid YAML{where}: {problem}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path!r} must be a mapping of argument names to values")
    return recipe


def recipe_name(argv: list[str]) -> str | None:
    """The file name of the recipe that starts `argv`, if one does."""
    return os.path.basename(argv[0]) if argv and argv[0].endswith(RECIPE_SUFFIXES) else None


def merge_overrides(base: dict, extra: dict) -> dict:
    """`base` updated key by key with `extra`; nested mappings (`text_config`, `vision_config`, ...) merged the same
    way. Neither argument is changed."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def _closest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, sorted(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_config_overrides(family, overrides: dict) -> None:
    """Raises ValueError for a key of `overrides` that is no field of the family's config (or, inside
    `text_config` / `vision_config`, of that sub-config), naming the closest valid field."""

    def check(config_class, mapping: dict, prefix: str) -> None:
        sub_configs = getattr(config_class, "sub_configs", None) or {}
        valid = {f.name for f in fields(config_class)} | set(sub_configs)
        for key, value in mapping.items():
            if key not in valid:
                raise ValueError(
                    f"config_overrides: {prefix}{key!r} is not a field of {config_class.__name__}"
                    f"{_closest(key, valid)}"
                )
            if key in sub_configs and isinstance(value, dict):
                sub_config = sub_configs[key]
                if not is_dataclass(sub_config):  # AutoConfig: the class of the mapping's (or default) model_type
                    model_type = value.get("model_type") or config_class.sub_configs_defaults[key].model_type
                    if model_type not in CONFIG_MAPPING:
                        raise ValueError(f"config_overrides: {prefix}{key}.model_type {model_type!r} is unknown")
                    sub_config = CONFIG_MAPPING[model_type]
                    value = {k: v for k, v in value.items() if k != "model_type"}
                check(sub_config, value, f"{prefix}{key}.")

    check(family.config_class, overrides, "")


def check_ranges(data_args, training_args) -> None:
    """Raises ValueError for a value out of its range (epochs or steps, learning rate, batch sizes, sample counts)."""
    if training_args.max_steps <= 0 and not training_args.num_train_epochs > 0:
        raise ValueError(
            f"num_train_epochs must be > 0 (or max_steps > 0), got num_train_epochs={training_args.num_train_epochs}"
        )
    if not training_args.learning_rate >= 0:  # 0 is allowed: a run that keeps its starting weights (checks, tests)
        raise ValueError(f"learning_rate must be >= 0, got {training_args.learning_rate}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(training_args, name)}")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 when given, got {value}")


PRETRAINED_STARTS = ("model_name_or_path", "init_from_clip", "init_from_blip", "vision_backbone", "text_backbone")


def _flag_given(argv: list[str], name: str) -> bool:
    return any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in argv)


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """`RECIPE [--flag value ...]` (or flags only) -> the three argument dataclasses, checked (unknown keys, config
    fields, ranges) before anything is written. `--config_overrides` merges into the recipe's, key by key."""
    recipe = {}
    if recipe_name(argv):
        recipe, argv = load_recipe(argv[0]), argv[1:]
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(
            f"unknown recipe keys: {unknown}" + "".join(f" ({key!r}{_closest(key, known)})" for key in unknown
                                                        if _closest(key, known))
        )
    get_family(recipe.get("family", "dtp_vit"))
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    # Non-string defaults reach the dataclasses unconverted: a recipe's mappings and lists stay Python objects.
    parser.set_defaults(**recipe)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    family = get_family(model_args.family)
    base = from_json(recipe.get("config_overrides"), dict, "config_overrides", "a JSON object") or {}
    # The recipe's overrides describe the recipe's fresh model: a command line that switches to a pretrained start
    # drops them (only its own --config_overrides apply), or, for a start that replaces one part of the model and
    # leaves the rest fresh (`Family.pretrained_parts`), that part's keys; otherwise its overrides merge into them.
    starts = [name for name in PRETRAINED_STARTS if _flag_given(argv, name)]
    given = _flag_given(argv, "config_overrides")
    if "model_name_or_path" in starts:
        # A saved model is the whole start: the recipe's pretrained parts (e.g. a `vision_backbone`) do not apply.
        for name in set(PRETRAINED_STARTS) - set(starts):
            setattr(model_args, name, None)
    if starts and not given:
        if len(starts) == 1 and starts[0] in family.pretrained_parts:
            replaced = family.pretrained_parts[starts[0]]
            model_args.config_overrides = {key: value for key, value in base.items() if key not in replaced}
        else:
            model_args.config_overrides = {}
    elif base and given and not starts:
        model_args.config_overrides = merge_overrides(base, model_args.config_overrides)
    check_config_overrides(family, model_args.config_overrides)
    check_ranges(data_args, training_args)
    return model_args, data_args, training_args


def check_pretrained_sources(model_args) -> None:
    """Refuses a pretrained start that cannot be found, before anything is built: a path (absolute, `./`, `~`, or
    more than one `/`) that is no folder, or, with HF_HUB_OFFLINE=1, a Hub id that is neither a local folder nor in
    the Hub cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    for name in (*PRETRAINED_STARTS, "tokenizer_name_or_path", "vae_name_or_path"):
        value = getattr(model_args, name, None)
        if not value or os.path.isdir(os.path.expanduser(value)):
            continue
        if os.path.isabs(value) or value.startswith((".", "~")) or value.count("/") > 1:
            raise ValueError(f"{name} {value!r}: no such folder")
        if name in PRETRAINED_STARTS and constants.HF_HUB_OFFLINE and not isinstance(
            try_to_load_from_cache(value, "config.json"), str
        ):
            raise ValueError(
                f"{name} {value!r} is neither a local folder nor in the Hub cache, and offline mode is on "
                f"(HF_HUB_OFFLINE=1): give a local folder (a recipe's earlier step writes it, e.g. outputs/...), or "
                f"download it first while online"
            )


def check_output_dir(training_args) -> None:
    """Refuses an `output_dir` that is a file, or a non-empty folder unless `overwrite_output_dir` or
    `resume_from_checkpoint` is set."""
    out = training_args.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"output_dir {out!r} is an existing file, not a folder; choose another --output_dir")
    overwrite = getattr(training_args, "overwrite_output_dir", False)
    if os.path.isdir(out) and os.listdir(out) and not overwrite and not training_args.resume_from_checkpoint:
        raise ValueError(
            f"output_dir {out!r} exists and is not empty; choose another --output_dir, pass --overwrite_output_dir "
            "to train into it anyway, or --resume_from_checkpoint to continue a run"
        )


def config_differences(config, defaults) -> str:
    """`key=value` for each field of `config` that differs from `defaults` (sub-configs as `text_config.key`),
    skipping the bookkeeping fields."""
    skip = {"transformers_version", "architectures", "_name_or_path", "id2label", "label2id", "dtype", "auto_map",
            "model_type"}

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            if key in skip:
                continue
            if isinstance(value, dict) and key.endswith("_config") and key != "vae_config":
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    mine, base = flat(config.to_dict()), flat(defaults.to_dict())
    changed = [f"{key}={mine[key]!r}" for key in sorted(mine) if key not in base or base[key] != mine[key]]
    return ", ".join(changed) if changed else "none"


BUILT_IN_DATA = {
    "image_classification": "scikit-learn's digits (built in)",
    "captioning": "the shapes captions (built in, leanvision.training.data.shapes)",
    "contrastive": "the single-object shapes set (built in, leanvision.training.data.shapes)",
    "visual_instruction": "the shapes questions and captions as conversations (built in, leanvision.training.data)",
}
TRAINING_RECORD = "leanvision_training.json"


def recorded_seed(model_dir: str) -> int:
    """The seed of the train.py run that saved `model_dir` (its `leanvision_training.json`), 0 when it has no record.
    The built-in digits split depends on it (`digits_dataset(seed=...)`), so a model is scored on its own test split."""
    path = os.path.join(model_dir, TRAINING_RECORD)
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("seed") or 0)


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
