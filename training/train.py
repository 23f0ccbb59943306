"""One training entry point for every leanvision model family.

    python training/train.py RECIPE.yaml [--flag value ...]
    accelerate launch training/train.py RECIPE.yaml [--flag value ...]

A recipe (YAML or JSON) holds defaults for the flags below and for any `transformers.TrainingArguments` field;
flags on the command line override it. `config_overrides` (a mapping in the recipe, a JSON object on the command
line) sets fields of the family's config. The final model and its processor are saved to `output_dir`, ready for
`leanvision export`; with `--lora`, a LoRA adapter of `model_name_or_path` and the processor (training/lora.py).
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field, fields

import yaml
from transformers import HfArgumentParser, TrainingArguments, set_seed

from leanvision.training.callbacks import build_freezing_callback
from leanvision.training.families import FAMILIES, get_family
from leanvision.training.lora import LoraArguments, apply_lora, write_adapter_record
from leanvision.training.tasks import TASKS

logger = logging.getLogger("leanvision.train")


@dataclass
class ModelArguments(LoraArguments):
    family: str = field(default="dtp_vit", metadata={"help": f"model family: one of {sorted(FAMILIES)}"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from this saved model (folder or Hub id) instead of a fresh one"}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON object of config fields, e.g. '{\"compression_rate\": 0.25}'"}
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
    freezing: str | None = field(
        default=None,
        metadata={"help": "progressive freezing: JSON list of phases (see training/callbacks.py); a list in a recipe"},
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset, save_to_disk folder or local data folder; default: the family's built-in set"},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "dataset configuration name"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    eval_split: str | None = field(
        default="auto", metadata={"help": "split to evaluate on; 'auto' = 'test' or 'validation' if present, else carved"}
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


BUILT_IN_DATA = {
    "image_classification": "scikit-learn's digits (built in)",
    "captioning": "the shapes captions (built in, leanvision.training.shapes)",
    "contrastive": "the single-object shapes set (built in, leanvision.training.shapes)",
}
TRAINING_RECORD = "leanvision_training.json"


def recipe_file(argv: list[str] | None) -> str | None:
    argv = sys.argv[1:] if argv is None else argv
    return os.path.basename(argv[0]) if argv and argv[0].endswith((".yaml", ".yml", ".json")) else None


def write_training_record(output_dir: str, family, model_args, data_args, training_args, recipe: str | None) -> None:
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
    with open(os.path.join(output_dir, TRAINING_RECORD), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def load_recipe(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"recipe file {path!r} does not exist")
    with open(path) as f:
        recipe = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path!r} must be a mapping of argument names to values")
    return recipe


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    recipe = {}
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        recipe, argv = load_recipe(argv[0]), argv[1:]
    known = {f.name for cls in (ModelArguments, DataArguments, TrainingArguments) for f in fields(cls)}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"unknown recipe keys: {unknown}")
    for key, kind in (("config_overrides", dict), ("freezing", list)):
        if isinstance(recipe.get(key), kind):
            recipe[key] = json.dumps(recipe[key])
    get_family(recipe.get("family", "dtp_vit"))
    parser.set_defaults(**recipe)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    get_family(model_args.family)
    return model_args, data_args, training_args


def main(argv: list[str] | None = None) -> dict:
    """Trains, evaluates and saves; returns the final evaluation metrics."""
    model_args, data_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    family = get_family(model_args.family)
    if data_args.eval_split == "auto":
        data_args.eval_split = None
    training_args.remove_unused_columns = False  # the datasets are transformed on the fly
    set_seed(training_args.seed)

    setup = TASKS[family.task](family, model_args, data_args, training_args)
    if model_args.lora:
        if model_args.freezing:
            logger.warning("--lora: the freezing schedule is not applied; only the LoRA weights train")
            model_args.freezing = None
        setup.model = apply_lora(setup.model, family, model_args)
    freezing = build_freezing_callback(model_args.freezing, model=setup.model)
    trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    logger.info(
        "family %s: %d trainable parameters, world size %d", family.name, trainable, training_args.world_size
    )
    trainer = setup.trainer_class(
        model=setup.model,
        args=training_args,
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset,
        data_collator=setup.data_collator,
        processing_class=setup.processor,
        compute_metrics=setup.compute_metrics,
        preprocess_logits_for_metrics=setup.preprocess_logits_for_metrics,
        callbacks=setup.callbacks + ([freezing] if freezing else []),
        **setup.trainer_kwargs,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if model_args.lora and trainer.is_world_process_zero():
        write_adapter_record(training_args.output_dir, family.name, model_args.model_name_or_path)
    if trainer.is_world_process_zero():
        write_training_record(training_args.output_dir, family, model_args, data_args, training_args, recipe_file(argv))
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return metrics


if __name__ == "__main__":
    main()
